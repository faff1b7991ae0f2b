package rootless

// Preflight is replaced by checks.go (prerequisite checks).
func Preflight() error { return nil }
