"""The operator's dealings with the Kubernetes API below its reconcile functions: the calls it
makes (`client.py`, whose verbs are its RBAC), what it last saw (`informer.py`), and the state it
keeps in the cluster: job status (`job_status.py`), conditions, circuit breakers, the SLO
ledger, stage durations, checkpoint retention and blocked stage pods."""
