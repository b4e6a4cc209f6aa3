"""Kubernetes manifests (kustomize) and their offline validation."""
