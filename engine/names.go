package engine

import (
	"crypto/rand"
	"math/big"
	"regexp"
)

// validName is Docker's rule for container names (the leading "/" optional).
var validName = regexp.MustCompile(`^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$`)

// Words for the names of containers created without one, adjective_noun as Docker makes
// them (moatc's own lists: moats, castles, water).
var (
	nameAdjectives = []string{"amber", "ancient", "brave", "bright", "calm", "clever", "deep", "eager", "fair",
		"gentle", "grand", "happy", "hidden", "keen", "kind", "lively", "lucky", "mellow", "misty", "noble",
		"patient", "plucky", "proud", "quiet", "rapid", "silent", "silver", "steady", "still", "stout",
		"swift", "tidy", "upbeat", "vivid", "wary", "wise", "witty", "young", "zealous", "zesty"}
	nameNouns = []string{"bailey", "barbican", "bastion", "battlement", "beacon", "bridge", "brook", "buttress",
		"canal", "castle", "causeway", "channel", "citadel", "crenel", "donjon", "drawbridge", "eddy", "estuary",
		"ford", "fortress", "gate", "harbor", "heron", "keep", "lagoon", "merlon", "mill", "moat", "otter",
		"palisade", "portcullis", "rampart", "reed", "river", "sluice", "spring", "tower", "turret", "wall", "weir"}
)

// randomName is a name for a container created without one.
func randomName() string {
	return pick(nameAdjectives) + "_" + pick(nameNouns)
}

func pick(words []string) string {
	n, err := rand.Int(rand.Reader, big.NewInt(int64(len(words))))
	if err != nil {
		return words[0]
	}
	return words[n.Int64()]
}
