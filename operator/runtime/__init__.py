"""Running a stage: the Kubernetes pod builder and the local subprocess runner."""
