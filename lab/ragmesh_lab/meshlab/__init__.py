"""The local mesh: the shipped Istio and Flagger manifests enforced by real Envoy sidecars."""
