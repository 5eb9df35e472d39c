"""Offline checks of the Kubernetes manifests under deploy/k8s (deploy/check/README.md)."""
