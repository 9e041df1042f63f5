package conformance_test

import (
	"testing"

	"sigs.k8s.io/gateway-api/conformance"
)

// TestConformance is the suite's own entry point (its conformance_test.go),
// configured by its flags: weft adds nothing to what it checks.
func TestConformance(t *testing.T) {
	conformance.RunConformance(t)
}
