// The real node's pod sandbox process (hack/realnode.py): no registry is reachable, so the
// pause image is built here from this file and imported into containerd.
module bakeline.io/hack/tools/pause

go 1.24.0
