package engine

import "testing"

func TestIsReaperRef(t *testing.T) {
	for ref, want := range map[string]string{
		"testcontainers/ryuk:0.14.0":                    "docker.io/testcontainers/ryuk:0.14.0",
		"docker.io/testcontainers/ryuk:0.13.0":          "docker.io/testcontainers/ryuk:0.13.0",
		"testcontainers/ryuk":                           "docker.io/testcontainers/ryuk:latest",
		"testcontainers/ryuk-not:1":                     "",
		"example.com/testcontainers/ryuk:0.14.0":        "",
		"busybox":                                       "",
		"testcontainers/ryuk@sha256:" + sixtyFourZeroes: "", // a digest names someone else's bytes
		"Not A Ref":                                     "",
	} {
		got, ok := isReaperRef(ref)
		if got != want || ok != (want != "") {
			t.Errorf("isReaperRef(%q) = %q, %v; want %q", ref, got, ok, want)
		}
	}
}

const sixtyFourZeroes = "0000000000000000000000000000000000000000000000000000000000000000"
