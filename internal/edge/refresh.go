package edge

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/parley-mesh/parley/internal/auth"
	"github.com/parley-mesh/parley/protocol"
)

// A connection authenticated by a JWT lives until the token's exp. A client
// that wants to stay connected sends a new token with "refresh" before then;
// the edge reminds it with an "expiring" push expiringLead before exp (or
// half-way, for a token that lives less than twice that), and closes with
// 4001 at exp if no refresh came.
const expiringLead = 30 * time.Second

// scheduleExpiry arms the expiry of the connection's token (replacing what
// an earlier token armed); a zero exp never expires (dev identities).
func (c *Conn) scheduleExpiry(exp time.Time) {
	c.expiryMu.Lock()
	defer c.expiryMu.Unlock()
	c.stopExpiryLocked()
	if exp.IsZero() {
		return
	}
	// One timer per connection, not two: it fires first for the expiring
	// push, then is re-armed for the close at exp.
	left := time.Until(exp)
	var t *time.Timer
	warned := false
	t = time.AfterFunc(left-min(expiringLead, left/2), func() {
		defer c.contain("timer")
		c.expiryMu.Lock()
		if c.tokenTimer != t { // re-scheduled or stopped meanwhile
			c.expiryMu.Unlock()
			return
		}
		if !warned {
			warned = true
			t.Reset(time.Until(exp))
			c.expiryMu.Unlock()
			b, err := json.Marshal(protocol.Notice{Op: protocol.OpExpiring, Expires: exp.UnixMilli(),
				Reason: "the token expires soon: send refresh with a new one"})
			if err == nil {
				c.deliver(b)
			}
			return
		}
		c.expiryMu.Unlock()
		c.close(protocol.CloseTokenExpired, "token expired: reconnect with a fresh token")
	})
	c.tokenTimer = t
}

// stopExpiry disarms the token's timer (teardown).
func (c *Conn) stopExpiry() {
	c.expiryMu.Lock()
	defer c.expiryMu.Unlock()
	c.stopExpiryLocked()
}

func (c *Conn) stopExpiryLocked() {
	if c.tokenTimer != nil {
		c.tokenTimer.Stop()
	}
	c.tokenTimer = nil
}

// refresh handles "refresh": a new token for the same user replaces the
// connection's identity. Its grants apply at once: each room the new token
// no longer lets the connection read is left, with an "unsubscribed" push
// before the reply; its exp replaces the old one.
func (c *Conn) refresh(req *protocol.Request) error {
	ident, err := c.reauthenticate(req.Token)
	if err != nil {
		return err
	}
	reply := protocol.Reply{ID: req.ID, OK: true}
	if !ident.Expires.IsZero() {
		reply.Expires = ident.Expires.UnixMilli()
	}
	c.reply(reply)
	return nil
}

// reauthenticate replaces the connection's identity with token's (refresh
// in either client protocol): the same user only; rooms the new grants no
// longer allow are left, each with an "unsubscribed" push; exp re-armed.
func (c *Conn) reauthenticate(token string) (*auth.Identity, error) {
	if c.e.verifier == nil {
		return nil, fmt.Errorf("%w: this edge has no JWT key configured; there is no token to refresh", protocol.ErrBadRequest)
	}
	if token == "" {
		return nil, fmt.Errorf("%w: token is required", protocol.ErrBadRequest)
	}
	ident, err := c.e.verifier.Verify(token)
	if err != nil {
		c.strike()
		return nil, fmt.Errorf("%w: invalid token: %w", protocol.ErrUnauthorized, err)
	}
	if ident.User != c.ident.User {
		c.strike()
		return nil, fmt.Errorf("%w: the token is for user %s, this connection is %s's", protocol.ErrForbidden, ident.User, c.ident.User)
	}
	c.ident = ident
	for room, r := range c.rooms {
		if ident.CanSubscribe(room) {
			continue
		}
		c.leaveRoom(room, r)
		b, err := json.Marshal(protocol.Notice{Op: protocol.OpUnsubscribed, Room: room,
			Reason: "the refreshed token does not allow room " + room})
		if err == nil {
			c.deliver(b)
		}
	}
	c.scheduleExpiry(ident.Expires)
	return ident, nil
}
