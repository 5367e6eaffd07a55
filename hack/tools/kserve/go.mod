// Pins KServe, whose CRDs (config/crd/full) the tests apply to the test control plane to check
// the ServingRuntime and InferenceService every model card shows (tests/support/kserve.py).
// Nothing here is built: `go mod download` fetches the module's files, checked by go.sum.
module bakeline.io/hack/tools/kserve

go 1.24.0

require github.com/kserve/kserve v0.15.2
