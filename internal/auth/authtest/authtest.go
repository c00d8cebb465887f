// Package authtest is for tests of token verification: signing keys with a
// kid, tokens, and a JWKS endpoint on loopback whose key set a test
// changes (or takes down) while an edge uses it.
package authtest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
)

// Key is a signing key of a test identity provider.
type Key struct {
	KID    string // "" signs tokens without a kid header
	Signer crypto.Signer
	Method jwt.SigningMethod
}

// NewES256 is a fresh P-256 key (cheap to make, unlike RSA under -race).
func NewES256(t testing.TB, kid string) *Key {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &Key{KID: kid, Signer: k, Method: jwt.SigningMethodES256}
}

// NewEd25519 is a fresh Ed25519 key.
func NewEd25519(t testing.TB, kid string) *Key {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &Key{KID: kid, Signer: k, Method: jwt.SigningMethodEdDSA}
}

// Claims are a Parley token's claims: sub, an hour of validity, and the
// rooms it may subscribe and publish to.
func Claims(sub string, rooms ...string) jwt.MapClaims {
	now := time.Now()
	return jwt.MapClaims{
		"sub": sub, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix(),
		"parley": map[string]any{"subscribe": rooms, "publish": rooms},
	}
}

// Sign signs claims with k, naming k.KID in the header.
func (k *Key) Sign(t testing.TB, claims jwt.Claims) string {
	t.Helper()
	tok := jwt.NewWithClaims(k.Method, claims)
	if k.KID != "" {
		tok.Header["kid"] = k.KID
	}
	s, err := tok.SignedString(k.Signer)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Token is Sign(Claims(sub, rooms...)).
func (k *Key) Token(t testing.TB, sub string, rooms ...string) string {
	t.Helper()
	return k.Sign(t, Claims(sub, rooms...))
}

// PublicPEM is the public key as a PEM "PUBLIC KEY" block.
func (k *Key) PublicPEM(t testing.TB) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(k.Signer.Public())
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// JWKS is an identity provider's JWKS endpoint on a loopback port.
type JWKS struct {
	*httptest.Server
	t    testing.TB
	mu   sync.Mutex
	body []byte
	down bool
	hits atomic.Int64
}

// NewJWKS serves an empty set until Serve.
func NewJWKS(t testing.TB) *JWKS {
	t.Helper()
	s := &JWKS{t: t, body: []byte(`{"keys":[]}`)}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		s.hits.Add(1)
		s.mu.Lock()
		body, down := s.body, s.down
		s.mu.Unlock()
		if down {
			http.Error(w, "identity provider down", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(body)
	}))
	t.Cleanup(s.Close)
	return s
}

// URL is the endpoint's address.
func (s *JWKS) URL() string { return s.Server.URL + "/.well-known/jwks.json" }

// Serve publishes the public halves of keys (what a provider does during a
// rotation: old, old and new, new).
func (s *JWKS) Serve(keys ...*Key) {
	s.t.Helper()
	s.ServeRaw(SetJSON(s.t, keys...))
}

// SetJSON is the JWKS document of the public halves of keys.
func SetJSON(t testing.TB, keys ...*Key) []byte {
	t.Helper()
	store := jwkset.NewMemoryStorage()
	for _, k := range keys {
		j, err := jwkset.NewJWKFromKey(k.Signer.Public(), jwkset.JWKOptions{
			Metadata: jwkset.JWKMetadataOptions{KID: k.KID, ALG: jwkset.ALG(k.Method.Alg()), USE: jwkset.UseSig},
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := store.KeyWrite(context.Background(), j); err != nil {
			t.Fatal(err)
		}
	}
	body, err := store.JSONPublic(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return body
}

// ServeRaw publishes body as it is.
func (s *JWKS) ServeRaw(body []byte) {
	s.mu.Lock()
	s.body, s.down = body, false
	s.mu.Unlock()
}

// SetDown makes the endpoint answer 503 (true) or serve its set again.
func (s *JWKS) SetDown(down bool) {
	s.mu.Lock()
	s.down = down
	s.mu.Unlock()
}

// Hits is how many requests the endpoint has had.
func (s *JWKS) Hits() int64 { return s.hits.Load() }
