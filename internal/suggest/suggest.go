// Package suggest finds the name a person probably meant, for "did you mean" in errors.
package suggest

// Distance is the Levenshtein distance between a and b.
func Distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// Limit is the largest distance worth suggesting for a name of n letters: one typo in a short
// name, two in a longer one.
func Limit(n int) int {
	if n >= 5 {
		return 2
	}
	return 1
}
