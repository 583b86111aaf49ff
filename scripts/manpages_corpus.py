"""Rebuild the evaluation corpus: Linux manual pages of Debian's manpages-dev, as Markdown.

    python scripts/manpages_corpus.py [OUT]     (default: var/corpus/manpages)

Downloads the pinned ``manpages-dev`` package with apt-get (no root needed), renders the
pages listed below with groff (no hyphenation, no justification, one line per paragraph)
and writes each as ``OUT/<name>.<section>.md``: the page title as a heading, each section
as a sub-heading, tagged paragraphs (a flag and its description) as a term line followed
by its description. The golden set ``samples/eval/manpages.jsonl`` names these files.
"""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGE = "manpages-dev=6.03-2"
PAGES = {
    "2": (
        "accept bind brk chdir chmod chown chroot clock_gettime clone close connect dup "
        "epoll_create epoll_ctl epoll_wait eventfd execve fcntl flock fork fsync futex getpid "
        "getrandom getrlimit gettimeofday inotify_init ioctl kill link listen lseek madvise "
        "mkdir mlock mmap mount nanosleep nice open pause pipe poll prctl ptrace read recv "
        "rename rmdir sched_yield select sendfile setuid sigaction signalfd socket splice "
        "stat symlink sync sysinfo timerfd_create truncate umask uname unlink wait write"
    ),
    "3": (
        "abort abs assert atexit atoi bsearch ctime dlopen errno exit fclose fgets "
        "fnmatch fopen fread fseek getenv getline getopt glob iconv isalpha malloc memcpy "
        "memmove memset mkstemp opendir perror popen printf pthread_create pthread_join "
        "qsort raise rand readdir realpath regcomp scanf sem_init setenv setjmp sleep "
        "strcmp strcpy strdup strerror strftime strlen strstr strtok strtol syslog system toupper "
        "usleep"
    ),
}
_HEADING = re.compile(r"^[A-Z][A-Z0-9 ,/-]*$")
_BORDER = re.compile(r"^[\s─━┌┐└┘├┤┬┴┼═╔╗╚╝╠╣╦╩╬+-]*$")


def download(workdir: Path) -> Path:
    """The package's files, extracted under ``workdir/root``."""
    subprocess.run(["apt-get", "download", PACKAGE], cwd=workdir, check=True)
    deb = next(workdir.glob("manpages-dev_*.deb"))
    root = workdir / "root"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root / "usr/share/man"


def render(man: Path, section: str, name: str) -> str:
    """One page as text: groff with long lines (a paragraph per line), no hyphenation."""
    source = gzip.decompress((man / f"man{section}/{name}.{section}.gz").read_bytes())
    link = re.match(rb"\.so\s+(\S+)", source)
    if link:  # a page that is another's (.so man2/wait.2)
        source = gzip.decompress((man / (link.group(1).decode() + ".gz")).read_bytes())
    out = subprocess.run(
        ["groff", "-t", "-man", "-Tutf8", "-P-cbou", "-rLL=2000n", "-rHY=0", "-dAD=l"],
        input=source,
        capture_output=True,
        check=True,
    )
    return out.stdout.decode()


def markdown(text: str) -> str:
    """groff's text as Markdown: headings for sections, a blank line between paragraphs."""
    lines = [line.rstrip() for line in text.splitlines()]
    body = [line for line in lines if line.strip()]
    header, footer = body[0], body[-1]
    title = header.split()[0]
    out = [f"# {title}", ""]
    previous_indent = 0
    for line in lines:
        if line in (header, footer) or (line.strip() and _BORDER.match(line)):
            continue  # table borders
        if "│" in line:  # a table row, as a Markdown table row
            cells = [" ".join(c.split()) for c in line.strip().strip("│").split("│")]
            line = "       " + " | ".join(cells)
        stripped = line.strip()
        if not stripped:
            if out[-1]:
                out.append("")
            previous_indent = 0
            continue
        indent = len(line) - len(line.lstrip())
        if indent == 0 and _HEADING.match(stripped):
            out += ["", f"## {stripped.title()}", ""]
        elif indent <= 3 and not out[-1]:
            out += [f"### {stripped}", ""]
        else:
            if out[-1] and indent > previous_indent:  # a tag's description: its own paragraph
                out.append("")
            out.append(" ".join(stripped.split()))
        previous_indent = indent
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip() + "\n"


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "var/corpus/manpages")
    if shutil.which("groff") is None:
        print("groff is missing: run make system-deps", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        man = download(Path(tmp))
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        count = 0
        for section, names in PAGES.items():
            for name in names.split():
                page = markdown(render(man, section, name))
                (out / f"{name}.{section}.md").write_text(page)
                count += 1
    print(f"{count} manual pages in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
