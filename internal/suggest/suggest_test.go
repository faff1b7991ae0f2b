package suggest

import "testing"

func TestDistance(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{{"", "", 0}, {"claude", "claude", 0}, {"claud", "claude", 1}, {"cluade", "claude", 2}, {"codex", "gemini", 6}, {"", "abc", 3}} {
		if got := Distance(tc.a, tc.b); got != tc.want {
			t.Errorf("Distance(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
	if Limit(4) != 1 || Limit(6) != 2 {
		t.Errorf("Limit")
	}
}
