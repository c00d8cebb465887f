// Package auth turns the JWT a client presents at the WebSocket upgrade into
// an Identity that the edge consults for every subscribe, publish and direct
// message.
package auth

import (
	"path"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/parley-mesh/parley/protocol"
)

// Claims is the JWT body Parley reads. Token issuers and tests build tokens
// with it, so the JSON layout here is the contract with the issuer:
//
//	{"sub":"alice","exp":1767225600,"parley":{"subscribe":["lobby","team-*"],"publish":["lobby"],"dm":true}}
type Claims struct {
	jwt.RegisteredClaims
	Parley Grants `json:"parley"`
}

// Grants lists what a user may do. Room lists are path.Match patterns; an
// empty list grants nothing, so a token without a "parley" claim can connect
// but cannot touch any room.
type Grants struct {
	Subscribe []string `json:"subscribe,omitempty"` // room patterns
	Publish   []string `json:"publish,omitempty"`   // room patterns
	// DM is a pointer because absence must mean "allowed" while an explicit
	// false must still be expressible.
	DM *bool `json:"dm,omitempty"`
}

// Identity is an authenticated user for the lifetime of one connection.
type Identity struct {
	User    string
	Expires time.Time // zero: never (only dev identities)
	Grants  Grants
}

// CanSubscribe reports whether the identity may receive messages of room.
func (id *Identity) CanSubscribe(room string) bool {
	if id == nil {
		return false
	}
	return matchAny(id.Grants.Subscribe, room)
}

// CanPublish reports whether the identity may send messages to room.
func (id *Identity) CanPublish(room string) bool {
	if id == nil {
		return false
	}
	return matchAny(id.Grants.Publish, room)
}

// CanDM reports whether the identity may send direct messages.
func (id *Identity) CanDM() bool {
	if id == nil {
		return false
	}
	return id.Grants.DM == nil || *id.Grants.DM
}

// Expired reports whether the identity's token has run out at now. The edge
// uses it to drop connections that outlive their token.
func (id *Identity) Expired(now time.Time) bool {
	return id != nil && !id.Expires.IsZero() && !now.Before(id.Expires)
}

// DevIdentity is for the insecure development mode only: it may subscribe and
// publish everywhere, send direct messages, and never expires.
func DevIdentity(user string) *Identity {
	allowed := true
	return &Identity{
		User: user,
		Grants: Grants{
			Subscribe: []string{"*"},
			Publish:   []string{"*"},
			DM:        &allowed,
		},
	}
}

// matchAny reports whether any pattern matches room. Room names that are not
// valid names are refused outright: a pattern like "*" must never become a
// way to reach a NATS subject such as "a.b" or ">" that the edge would
// otherwise have rejected.
func matchAny(patterns []string, room string) bool {
	if !protocol.ValidName(room) {
		return false
	}
	for _, p := range patterns {
		// A malformed pattern returns an error; treating it as a
		// non-match keeps a typo in the issuer from widening access.
		if ok, err := path.Match(p, room); ok && err == nil {
			return true
		}
	}
	return false
}
