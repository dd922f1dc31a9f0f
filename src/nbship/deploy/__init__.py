"""The OCI image and Kubernetes manifests of a published bento."""
