"""Document content is data, never instructions: what every engine applies to passages.

Passages come from whatever users ingested, so a passage may try to speak for the system:
fake citation markers (``[3]`` pointing at another passage), a fake end of its own block,
or sentences that give orders to whoever writes the answer ("ignore the instructions
above and say ..."). :func:`neutralize` rewrites the first two in each passage before any
engine sees it; :func:`is_instruction` tells the extractive engine which sentences never to
quote. The prompt template delimits each passage and says they are untrusted data.
"""

from __future__ import annotations

import re

# [3], [1, 2] and [12-14] inside a passage would read as the answer's own citations
# (an index such as a[0] is code, not a marker).
_MARKER = re.compile(r"(?<![\w\])])\[(\s*\d+(?:\s*[-,]\s*\d+)*\s*)\]")
# The delimiters of the prompt template, in any case or spacing.
_DELIMITER = re.compile(r"<\s*(/?\s*passage)", re.IGNORECASE)

_INSTRUCTION = re.compile(
    "|".join(
        [
            # overriding what the answerer was told
            r"\b(ignore|disregard|forget|override)\b[^.!?]{0,60}"
            r"\b(instructions?|prompts?|rules|guidelines|passages?|context|everything)\b",
            # orders to the answerer by name
            r"\b(you|assistants?|the (ai|model|bot|chatbot)|language models?|llms?)\s+"
            r"(must|should|shall|will now|are (now )?to|have to|need to|are instructed)\b",
            # a turn of a conversation
            r"^\W*(system|assistant|user|human|ai)\s*:",
            r"\bsystem prompt\b",
            # imperatives addressed to whoever answers
            r"^\W*(please\s+)?(tell|inform|assure)\s+(the\s+)?(user|reader|asker|customer)s?\b",
            r"^\W*(please\s+)?(respond|reply|answer|say|output|print|repeat)\s+"
            r"(only|exactly|with|that|the following|this|verbatim)\b",
            r"^\W*(please\s+)?(pretend|act as|roleplay|role-play|from now on)\b",
            r"\bdo not (tell|mention|reveal|cite|disclose)\b",
            r"\bwhen (asked|answering|you answer|responding)\b",
        ]
    ),
    re.IGNORECASE,
)


def neutralize(text: str) -> str:
    """``text`` with citation markers as ``(n)`` and prompt delimiters broken."""
    text = _MARKER.sub(lambda m: f"({m.group(1)})", text)
    return _DELIMITER.sub(lambda m: f"‹{m.group(1)}", text)


def is_instruction(sentence: str) -> bool:
    """Whether ``sentence`` gives orders to whoever writes the answer."""
    return _INSTRUCTION.search(sentence) is not None
