"""ragmesh benchmarks: each service against the engine inside it and against a peer."""
