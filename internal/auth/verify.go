package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/parley-mesh/parley/protocol"
)

// ErrInvalidToken is wrapped by every error Verify returns, so callers can
// tell a client's bad token apart from anything else with errors.Is.
var ErrInvalidToken = errors.New("invalid token")

// MaxTokenLen bounds the token Verify will look at. Real Parley tokens are a
// few hundred bytes; refusing huge ones early keeps an unauthenticated client
// from making the edge base64- and JSON-decode megabytes.
const MaxTokenLen = 16 << 10

// TokenError is what Verify returns. Its message is short and safe to send
// to the client ("invalid token: expired"); the underlying jwt error, which
// may say more than a client should learn, is only reachable via Unwrap for
// logging.
type TokenError struct {
	Reason string // short, client-safe: "expired", "bad signature", ...
	Err    error  // underlying cause, may be nil
}

func (e *TokenError) Error() string { return ErrInvalidToken.Error() + ": " + e.Reason }

// Unwrap exposes both ErrInvalidToken and the jwt cause, so errors.Is works
// for either (e.g. errors.Is(err, jwt.ErrTokenExpired)).
func (e *TokenError) Unwrap() []error {
	if e.Err == nil {
		return []error{ErrInvalidToken}
	}
	return []error{ErrInvalidToken, e.Err}
}

func invalid(reason string, cause error) error {
	return &TokenError{Reason: reason, Err: cause}
}

// Config selects which tokens a Verifier accepts.
type Config struct {
	HMACSecret   []byte // enables HS256/HS384/HS512
	PublicKeyPEM []byte // enables RS*/PS* (RSA), EdDSA (Ed25519) or ES* (ECDSA, the one matching the curve); PEM "PUBLIC KEY", "RSA PUBLIC KEY" or "CERTIFICATE" blocks, several for a rotation
	// Keys, instead of the two above, are keys that change while the edge
	// runs: key files re-read, a JWKS endpoint.
	Keys     *Keys
	Issuer   string        // if set, `iss` must equal it
	Audience string        // if set, `aud` must contain it
	Leeway   time.Duration // clock skew allowed on exp/nbf/iat
}

// Enabled reports whether token authentication is configured at all; when
// it is not, the edge either refuses to start or runs in dev mode.
func (c Config) Enabled() bool {
	return len(c.HMACSecret) > 0 || len(c.PublicKeyPEM) > 0 || c.Keys != nil
}

// Verifier checks tokens. It is safe for concurrent use; its keys change
// only through Config.Keys.
type Verifier struct {
	keys *Keys
	opts []jwt.ParserOption

	// Kept only to name a missing claim in error reasons.
	issuer, audience string
}

// NewVerifier builds a Verifier from cfg.
func NewVerifier(cfg Config) (*Verifier, error) {
	if !cfg.Enabled() {
		return nil, errors.New("auth: neither an HMAC secret nor a public key is configured")
	}
	if cfg.Leeway < 0 {
		return nil, fmt.Errorf("auth: leeway must not be negative, got %v", cfg.Leeway)
	}
	v := &Verifier{keys: cfg.Keys, issuer: cfg.Issuer, audience: cfg.Audience}
	if v.keys != nil && (len(cfg.HMACSecret) > 0 || len(cfg.PublicKeyPEM) > 0) {
		return nil, errors.New("auth: give Keys or a secret and public key, not both")
	}
	if v.keys == nil {
		var (
			secrets [][]byte
			pubs    []crypto.PublicKey
		)
		if len(cfg.HMACSecret) > 0 {
			secrets = [][]byte{cfg.HMACSecret}
		}
		if len(cfg.PublicKeyPEM) > 0 {
			var err error
			if pubs, err = ParsePublicKeys(cfg.PublicKeyPEM); err != nil {
				return nil, fmt.Errorf("auth: public key: %w", err)
			}
		}
		set, err := NewKeySet(secrets, pubs)
		if err != nil {
			return nil, fmt.Errorf("auth: public key: %w", err)
		}
		v.keys = NewKeys(set)
	}
	v.opts = []jwt.ParserOption{
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(cfg.Leeway),
	}
	if cfg.Issuer != "" {
		v.opts = append(v.opts, jwt.WithIssuer(cfg.Issuer))
	}
	if cfg.Audience != "" {
		v.opts = append(v.opts, jwt.WithAudience(cfg.Audience))
	}
	return v, nil
}

// Algorithms lists the JWT "alg" values this verifier accepts now, for
// startup logs.
func (v *Verifier) Algorithms() []string { return v.keys.snapshot().methods }

// Verify checks token's signature and claims and returns who it speaks for.
// Every error wraps ErrInvalidToken and its message is safe to show the
// client.
func (v *Verifier) Verify(token string) (*Identity, error) {
	if token == "" {
		return nil, invalid("missing token", nil)
	}
	if len(token) > MaxTokenLen {
		return nil, invalid("token too large", nil)
	}
	// One generation of keys for the whole verification: a reload in the
	// middle cannot mix the allow-list of one with the keys of another.
	keys := v.keys.snapshot()
	// The allow-list is what defeats alg confusion: an HS256 token
	// "signed" with the public key's PEM as secret never reaches the key
	// function unless an HMAC secret is configured too, and even then
	// keyFor hands HMAC only the secrets.
	parser := jwt.NewParser(append([]jwt.ParserOption{jwt.WithValidMethods(keys.methods)}, v.opts...)...)
	var claims Claims
	tok, err := parser.ParseWithClaims(token, &claims, keys.keyFor)
	if err != nil {
		return nil, invalid(v.reason(tok, &claims, err, keys.methods), err)
	}
	if !tok.Valid {
		// Unreachable with jwt/v5 (a nil error means valid), but
		// trusting a token on the absence of an error alone is the kind of
		// assumption a library upgrade can break.
		return nil, invalid("invalid", nil)
	}
	sub := claims.Subject
	if sub == "" {
		return nil, invalid("missing sub", nil)
	}
	// The user name ends up in NATS subjects, so it has to obey the same
	// rules as room names.
	if !protocol.ValidName(sub) {
		return nil, invalid("invalid sub", nil)
	}
	// WithExpirationRequired guarantees ExpiresAt is set; the check is
	// only there so a missing exp can never become "never expires".
	if claims.ExpiresAt == nil {
		return nil, invalid("missing exp", nil)
	}
	return &Identity{
		User:    sub,
		Expires: claims.ExpiresAt.Time,
		Grants:  claims.Parley,
	}, nil
}

// errUnknownKey: no configured key can have signed the token (its kid is
// not in the JWKS, or no key of its algorithm is configured any more).
var errUnknownKey = errors.New("no key for this token")

// keyFor returns the keys the token may have been signed with, tried in
// turn by jwt. The parser has already rejected algorithms outside the
// allow-list; the type switch makes sure that HMAC can only ever be fed the
// secrets, never a public key (nor a JWKS "oct" key, which anyone can
// fetch).
func (s snapshot) keyFor(t *jwt.Token) (any, error) {
	var keys jwt.VerificationKeySet
	switch t.Method.(type) {
	case *jwt.SigningMethodHMAC:
		for _, sec := range s.set.Secrets {
			keys.Keys = append(keys.Keys, sec)
		}
	case *jwt.SigningMethodRSA, *jwt.SigningMethodRSAPSS, *jwt.SigningMethodECDSA, *jwt.SigningMethodEd25519:
		alg := t.Method.Alg()
		for _, k := range s.set.Public {
			if fits(k, alg) {
				keys.Keys = append(keys.Keys, k)
			}
		}
		if s.jwks != nil {
			for _, k := range s.jwks.keysFor(t) {
				if fits(k, alg) {
					keys.Keys = append(keys.Keys, k)
				}
			}
		}
	default:
		return nil, fmt.Errorf("unsupported signing method %q", t.Method.Alg())
	}
	if len(keys.Keys) == 0 {
		return nil, errUnknownKey
	}
	if len(keys.Keys) == 1 {
		return keys.Keys[0], nil
	}
	return keys, nil
}

// reason maps a jwt parse error to a short reason the client may see.
func (v *Verifier) reason(tok *jwt.Token, claims *Claims, err error, methods []string) string {
	if errors.Is(err, jwt.ErrTokenMalformed) {
		return "malformed"
	}
	// Check the algorithm before the signature: jwt reports a disallowed
	// alg as a signature error, which would mislead whoever debugs the
	// issuer.
	if tok == nil || tok.Method == nil || !slices.Contains(methods, tok.Method.Alg()) {
		return "unexpected alg"
	}
	switch {
	case errors.Is(err, errUnknownKey):
		// The kid (or the algorithm) names a key this edge does not
		// have: a rotation the edge has not seen yet, or a stale token.
		return "unknown key"
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		return "unexpected alg"
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return "bad signature"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		// jwt only names the missing claim in free text, so look at what
		// was decoded instead.
		switch {
		case claims.ExpiresAt == nil:
			return "missing exp"
		case v.issuer != "" && claims.Issuer == "":
			return "missing iss"
		case v.audience != "" && len(claims.Audience) == 0:
			return "missing aud"
		default:
			return "missing claim"
		}
	case errors.Is(err, jwt.ErrTokenExpired):
		return "expired"
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return "not valid yet"
	case errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return "issued in the future"
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return "wrong issuer"
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return "wrong audience"
	default:
		return "invalid"
	}
}

// methodsForKey lists the algorithms a key can verify. ECDSA is tied to its
// curve because ES256/384/512 each name one curve; accepting another would
// only ever fail later with a confusing signature error.
func methodsForKey(pub crypto.PublicKey) ([]string, error) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}, nil
	case ed25519.PublicKey:
		return []string{"EdDSA"}, nil
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return []string{"ES256"}, nil
		case elliptic.P384():
			return []string{"ES384"}, nil
		case elliptic.P521():
			return []string{"ES512"}, nil
		default:
			return nil, fmt.Errorf("unsupported ECDSA curve %s", k.Curve.Params().Name)
		}
	default:
		return nil, fmt.Errorf("unsupported key type %T (want RSA, Ed25519 or ECDSA)", pub)
	}
}

// TokenFromRequest extracts the token from "Authorization: Bearer X" or,
// because browsers cannot set headers on a WebSocket handshake, from the
// "token" query parameter. It returns "" when neither is present.
func TokenFromRequest(r *http.Request) string {
	if r == nil {
		return ""
	}
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, rest, ok := strings.Cut(strings.TrimSpace(h), " ")
		if ok && strings.EqualFold(scheme, "Bearer") {
			if t := strings.TrimSpace(rest); t != "" {
				return t
			}
		}
	}
	if r.URL == nil {
		return ""
	}
	return r.URL.Query().Get("token")
}
