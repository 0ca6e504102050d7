"""Tests of etc/: the init script, logrotate, the container image and the Kubernetes
manifests, run as their real tools run them (sh, logrotate, hadolint, a schema validator)."""
