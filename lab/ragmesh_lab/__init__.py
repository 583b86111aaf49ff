"""ragmesh's laptop tooling, apart from what ships in images: the ``ragmesh`` command, the
local stack supervisor (``ragmesh up``, the tests, the benchmarks) and the local mesh
(``ragmesh mesh up``: the manifests enforced by real Envoy sidecars)."""
