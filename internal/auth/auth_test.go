package auth

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"math/big"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

var secret = []byte("0123456789abcdef0123456789abcdef")

func pkixPEM(t *testing.T, pub any) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

// rsaKey is shared because RSA key generation dominates test time under -race.
var rsaKey = sync.OnceValue(func() *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return k
})

func validClaims(sub string) Claims {
	return Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   sub,
			ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour)),
			IssuedAt:  jwt.NewNumericDate(time.Now()),
		},
		Parley: Grants{Subscribe: []string{"lobby", "team-*"}, Publish: []string{"lobby"}},
	}
}

func sign(t *testing.T, m jwt.SigningMethod, claims jwt.Claims, key any) string {
	t.Helper()
	s, err := jwt.NewWithClaims(m, claims).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func newVerifier(t *testing.T, cfg Config) *Verifier {
	t.Helper()
	v, err := NewVerifier(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func mustVerify(t *testing.T, v *Verifier, tok string) *Identity {
	t.Helper()
	id, err := v.Verify(tok)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	return id
}

func mustReject(t *testing.T, v *Verifier, tok, wantReason string) {
	t.Helper()
	id, err := v.Verify(tok)
	if err == nil {
		t.Fatalf("Verify accepted token for %q", id.User)
	}
	if !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("error %v does not wrap ErrInvalidToken", err)
	}
	if want := "invalid token: " + wantReason; err.Error() != want {
		t.Fatalf("error = %q, want %q", err, want)
	}
}

func TestHS256Valid(t *testing.T) {
	v := newVerifier(t, Config{HMACSecret: secret})
	c := validClaims("alice")
	id := mustVerify(t, v, sign(t, jwt.SigningMethodHS256, c, secret))
	if id.User != "alice" {
		t.Errorf("User = %q", id.User)
	}
	if !id.Expires.Equal(c.ExpiresAt.Time) {
		t.Errorf("Expires = %v, want %v", id.Expires, c.ExpiresAt.Time)
	}
	if !id.CanSubscribe("team-a") || !id.CanPublish("lobby") || id.CanPublish("team-a") {
		t.Errorf("grants not carried over: %+v", id.Grants)
	}
	// Other HMAC sizes are enabled by the same secret.
	mustVerify(t, v, sign(t, jwt.SigningMethodHS512, c, secret))
}

func TestRS256Valid(t *testing.T) {
	k := rsaKey()
	v := newVerifier(t, Config{PublicKeyPEM: pkixPEM(t, &k.PublicKey)})
	mustVerify(t, v, sign(t, jwt.SigningMethodRS256, validClaims("bob"), k))
	mustVerify(t, v, sign(t, jwt.SigningMethodPS256, validClaims("bob"), k))
}

func TestRSAPKCS1AndCertificate(t *testing.T) {
	k := rsaKey()
	tok := sign(t, jwt.SigningMethodRS256, validClaims("bob"), k)

	pkcs1 := pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(&k.PublicKey)})
	mustVerify(t, newVerifier(t, Config{PublicKeyPEM: pkcs1}), tok)

	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "issuer"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	cert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	mustVerify(t, newVerifier(t, Config{PublicKeyPEM: cert}), tok)
}

func TestEdDSAValid(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	v := newVerifier(t, Config{PublicKeyPEM: pkixPEM(t, pub)})
	if id := mustVerify(t, v, sign(t, jwt.SigningMethodEdDSA, validClaims("carol"), priv)); id.User != "carol" {
		t.Errorf("User = %q", id.User)
	}
	// A different Ed25519 key must not verify.
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	mustReject(t, v, sign(t, jwt.SigningMethodEdDSA, validClaims("carol"), other), "bad signature")
}

func TestES256Valid(t *testing.T) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	v := newVerifier(t, Config{PublicKeyPEM: pkixPEM(t, &k.PublicKey)})
	mustVerify(t, v, sign(t, jwt.SigningMethodES256, validClaims("dave"), k))
	if got := v.Algorithms(); len(got) != 1 || got[0] != "ES256" {
		t.Errorf("Algorithms = %v, want [ES256] for a P-256 key", got)
	}
}

func TestExpiredRejected(t *testing.T) {
	v := newVerifier(t, Config{HMACSecret: secret})
	c := validClaims("alice")
	c.ExpiresAt = jwt.NewNumericDate(time.Now().Add(-time.Minute))
	c.IssuedAt = jwt.NewNumericDate(time.Now().Add(-time.Hour))
	tok := sign(t, jwt.SigningMethodHS256, c, secret)
	mustReject(t, v, tok, "expired")

	_, err := v.Verify(tok)
	if !errors.Is(err, jwt.ErrTokenExpired) {
		t.Errorf("cause not exposed for logging: %v", err)
	}

	// Within the configured leeway the same token passes.
	lenient := newVerifier(t, Config{HMACSecret: secret, Leeway: 5 * time.Minute})
	mustVerify(t, lenient, tok)
}

func TestMissingExpRejected(t *testing.T) {
	v := newVerifier(t, Config{HMACSecret: secret})
	c := validClaims("alice")
	c.ExpiresAt = nil
	mustReject(t, v, sign(t, jwt.SigningMethodHS256, c, secret), "missing exp")
}

func TestNotYetValidAndFutureIAT(t *testing.T) {
	v := newVerifier(t, Config{HMACSecret: secret})
	c := validClaims("alice")
	c.NotBefore = jwt.NewNumericDate(time.Now().Add(10 * time.Minute))
	mustReject(t, v, sign(t, jwt.SigningMethodHS256, c, secret), "not valid yet")

	c = validClaims("alice")
	c.IssuedAt = jwt.NewNumericDate(time.Now().Add(10 * time.Minute))
	mustReject(t, v, sign(t, jwt.SigningMethodHS256, c, secret), "issued in the future")
}

func TestSubRejected(t *testing.T) {
	v := newVerifier(t, Config{HMACSecret: secret})
	mustReject(t, v, sign(t, jwt.SigningMethodHS256, validClaims(""), secret), "missing sub")
	for _, sub := range []string{"a.b", "*", ">", "a b", "ä", strings.Repeat("x", 129)} {
		mustReject(t, v, sign(t, jwt.SigningMethodHS256, validClaims(sub), secret), "invalid sub")
	}
	mustVerify(t, v, sign(t, jwt.SigningMethodHS256, validClaims(strings.Repeat("x", 128)), secret))
}

func TestWrongSecretRejected(t *testing.T) {
	v := newVerifier(t, Config{HMACSecret: secret})
	mustReject(t, v, sign(t, jwt.SigningMethodHS256, validClaims("alice"), []byte("not the secret")), "bad signature")
}

func TestAlgConfusionRejected(t *testing.T) {
	k := rsaKey()
	pubPEM := pkixPEM(t, &k.PublicKey)
	v := newVerifier(t, Config{PublicKeyPEM: pubPEM})
	forged := sign(t, jwt.SigningMethodHS256, validClaims("mallory"), pubPEM)
	mustReject(t, v, forged, "unexpected alg")

	// With both a secret and a key configured, HMAC is allowed but must
	// only ever be checked against the secret.
	both := newVerifier(t, Config{HMACSecret: secret, PublicKeyPEM: pubPEM})
	mustReject(t, both, forged, "bad signature")
	mustVerify(t, both, sign(t, jwt.SigningMethodHS256, validClaims("alice"), secret))
	mustVerify(t, both, sign(t, jwt.SigningMethodRS256, validClaims("bob"), k))
}

func TestAlgNotMatchingKeyRejected(t *testing.T) {
	k := rsaKey()
	v := newVerifier(t, Config{HMACSecret: secret})
	mustReject(t, v, sign(t, jwt.SigningMethodRS256, validClaims("bob"), k), "unexpected alg")
}

func TestAlgNoneRejected(t *testing.T) {
	v := newVerifier(t, Config{HMACSecret: secret})
	tok := sign(t, jwt.SigningMethodNone, validClaims("mallory"), jwt.UnsafeAllowNoneSignatureType)
	mustReject(t, v, tok, "unexpected alg")

	// Hand-built variants that do not go through the library's signer.
	body := base64.RawURLEncoding.EncodeToString([]byte(`{"sub":"mallory","exp":9999999999}`))
	for _, hdr := range []string{`{"alg":"none"}`, `{"alg":"None"}`, `{"alg":"NONE"}`, `{}`} {
		h := base64.RawURLEncoding.EncodeToString([]byte(hdr))
		mustReject(t, v, h+"."+body+".", "unexpected alg")
	}
}

func TestMalformedRejected(t *testing.T) {
	v := newVerifier(t, Config{HMACSecret: secret})
	mustReject(t, v, "", "missing token")
	mustReject(t, v, "not-a-jwt", "malformed")
	mustReject(t, v, "a.b.c", "malformed")
	mustReject(t, v, strings.Repeat("a", MaxTokenLen+1), "token too large")
}

func TestIssuerAudience(t *testing.T) {
	v := newVerifier(t, Config{HMACSecret: secret, Issuer: "https://issuer", Audience: "parley"})

	good := validClaims("alice")
	good.Issuer = "https://issuer"
	good.Audience = jwt.ClaimStrings{"other", "parley"}
	mustVerify(t, v, sign(t, jwt.SigningMethodHS256, good, secret))

	badIss := good
	badIss.Issuer = "https://evil"
	mustReject(t, v, sign(t, jwt.SigningMethodHS256, badIss, secret), "wrong issuer")

	noIss := good
	noIss.Issuer = ""
	mustReject(t, v, sign(t, jwt.SigningMethodHS256, noIss, secret), "missing iss")

	badAud := good
	badAud.Audience = jwt.ClaimStrings{"other"}
	mustReject(t, v, sign(t, jwt.SigningMethodHS256, badAud, secret), "wrong audience")

	noAud := good
	noAud.Audience = nil
	mustReject(t, v, sign(t, jwt.SigningMethodHS256, noAud, secret), "missing aud")

	// Without Issuer/Audience configured, neither claim is looked at.
	plain := newVerifier(t, Config{HMACSecret: secret})
	mustVerify(t, plain, sign(t, jwt.SigningMethodHS256, badAud, secret))
}

func TestPatternGrants(t *testing.T) {
	tests := []struct {
		name     string
		patterns []string
		room     string
		want     bool
	}{
		{"star", []string{"*"}, "anything", true},
		{"prefix match", []string{"team-*"}, "team-a", true},
		{"prefix empty rest", []string{"team-*"}, "team-", true},
		{"prefix mismatch", []string{"team-*"}, "teams", false},
		{"exact", []string{"lobby"}, "lobby", true},
		{"exact mismatch", []string{"lobby"}, "lobby2", false},
		{"none", nil, "lobby", false},
		{"empty list", []string{}, "lobby", false},
		{"second pattern", []string{"x", "lobby"}, "lobby", true},
		{"invalid pattern", []string{"[lobby"}, "lobby", false},
		{"invalid pattern then valid", []string{"[", "lobby"}, "lobby", true},
		{"invalid room", []string{"*"}, "a.b", false},
		{"empty room", []string{"*"}, "", false},
		{"wildcard room", []string{"*"}, ">", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id := &Identity{User: "u", Grants: Grants{Subscribe: tc.patterns, Publish: tc.patterns}}
			if got := id.CanSubscribe(tc.room); got != tc.want {
				t.Errorf("CanSubscribe(%q) = %v, want %v", tc.room, got, tc.want)
			}
			if got := id.CanPublish(tc.room); got != tc.want {
				t.Errorf("CanPublish(%q) = %v, want %v", tc.room, got, tc.want)
			}
		})
	}

	// Subscribe and publish grants are independent.
	id := &Identity{Grants: Grants{Subscribe: []string{"*"}}}
	if !id.CanSubscribe("lobby") || id.CanPublish("lobby") {
		t.Error("subscribe grant leaked into publish")
	}

	var nilID *Identity
	if nilID.CanSubscribe("lobby") || nilID.CanPublish("lobby") || nilID.CanDM() {
		t.Error("nil identity must be denied everything")
	}
}

func TestDM(t *testing.T) {
	v := newVerifier(t, Config{HMACSecret: secret})

	c := validClaims("alice")
	if id := mustVerify(t, v, sign(t, jwt.SigningMethodHS256, c, secret)); !id.CanDM() {
		t.Error("DM should default to allowed")
	}

	no := false
	c.Parley.DM = &no
	if id := mustVerify(t, v, sign(t, jwt.SigningMethodHS256, c, secret)); id.CanDM() {
		t.Error("explicit dm:false ignored")
	}

	yes := true
	c.Parley.DM = &yes
	if id := mustVerify(t, v, sign(t, jwt.SigningMethodHS256, c, secret)); !id.CanDM() {
		t.Error("explicit dm:true ignored")
	}
}

func TestClaimsJSONLayout(t *testing.T) {
	// The issuer-facing JSON is the contract; decode a hand-written body.
	v := newVerifier(t, Config{HMACSecret: secret})
	exp := time.Now().Add(time.Hour).Unix()
	h := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))
	b := base64.RawURLEncoding.EncodeToString([]byte(`{"sub":"alice","exp":` + itoa(exp) +
		`,"parley":{"subscribe":["lobby","team-*"],"publish":["lobby"],"dm":false}}`))
	tok, err := jwt.SigningMethodHS256.Sign(h+"."+b, secret)
	if err != nil {
		t.Fatal(err)
	}
	id := mustVerify(t, v, h+"."+b+"."+base64.RawURLEncoding.EncodeToString(tok))
	if !id.CanSubscribe("team-x") || !id.CanPublish("lobby") || id.CanPublish("team-x") || id.CanDM() {
		t.Errorf("unexpected grants %+v", id.Grants)
	}
}

func itoa(n int64) string { return big.NewInt(n).String() }

func TestDevIdentity(t *testing.T) {
	id := DevIdentity("dev")
	if id.User != "dev" || !id.Expires.IsZero() {
		t.Errorf("unexpected dev identity %+v", id)
	}
	if !id.CanSubscribe("any-room") || !id.CanPublish("other") || !id.CanDM() {
		t.Error("dev identity should be allowed everything")
	}
	if id.Expired(time.Now().Add(100 * 365 * 24 * time.Hour)) {
		t.Error("dev identity must never expire")
	}
}

func TestIdentityExpired(t *testing.T) {
	now := time.Now()
	id := &Identity{User: "u", Expires: now}
	if id.Expired(now.Add(-time.Second)) || !id.Expired(now) {
		t.Error("Expired boundary wrong")
	}
}

func TestTokenFromRequest(t *testing.T) {
	tests := []struct {
		name   string
		url    string
		header string
		want   string
	}{
		{"header", "/ws", "Bearer abc", "abc"},
		{"header scheme case-insensitive", "/ws", "bearer abc", "abc"},
		{"header upper", "/ws", "BEARER abc", "abc"},
		{"header wins over query", "/ws?token=q", "Bearer h", "h"},
		{"query", "/ws?token=q", "", "q"},
		{"non-bearer header falls back to query", "/ws?token=q", "Basic dXNlcjpwYXNz", "q"},
		{"empty bearer falls back to query", "/ws?token=q", "Bearer ", "q"},
		{"nothing", "/ws", "", ""},
		{"bare scheme", "/ws", "Bearer", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", tc.url, nil)
			if tc.header != "" {
				r.Header.Set("Authorization", tc.header)
			}
			if got := TokenFromRequest(r); got != tc.want {
				t.Errorf("TokenFromRequest = %q, want %q", got, tc.want)
			}
		})
	}
	if TokenFromRequest(nil) != "" {
		t.Error("nil request")
	}
}

func TestNewVerifierErrors(t *testing.T) {
	priv, err := x509.MarshalPKCS8PrivateKey(rsaKey())
	if err != nil {
		t.Fatal(err)
	}
	k, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	p224, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"nothing", Config{}, "neither"},
		{"garbage", Config{PublicKeyPEM: []byte("garbage")}, "no PEM block"},
		{"bad der", Config{PublicKeyPEM: pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte("junk")})}, "parse PKIX"},
		{"bad pkcs1", Config{PublicKeyPEM: pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: []byte("junk")})}, "PKCS#1"},
		{"bad cert", Config{PublicKeyPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("junk")})}, "certificate"},
		{"private key", Config{PublicKeyPEM: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: priv})}, "public key instead"},
		{"other block", Config{PublicKeyPEM: pem.EncodeToMemory(&pem.Block{Type: "FOO", Bytes: []byte("x")})}, "unsupported PEM block"},
		{"unsupported curve", Config{PublicKeyPEM: pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: p224})}, "curve"},
		{"garbage with secret", Config{HMACSecret: secret, PublicKeyPEM: []byte("garbage")}, "no PEM block"},
		{"negative leeway", Config{HMACSecret: secret, Leeway: -time.Second}, "leeway"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v, err := NewVerifier(tc.cfg)
			if err == nil {
				t.Fatalf("NewVerifier succeeded: %v", v.Algorithms())
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

func TestConfigEnabled(t *testing.T) {
	if (Config{}).Enabled() {
		t.Error("empty config enabled")
	}
	if !(Config{HMACSecret: secret}).Enabled() || !(Config{PublicKeyPEM: []byte("x")}).Enabled() {
		t.Error("configured config not enabled")
	}
}

func TestSecretCopied(t *testing.T) {
	buf := append([]byte(nil), secret...)
	v := newVerifier(t, Config{HMACSecret: buf})
	tok := sign(t, jwt.SigningMethodHS256, validClaims("alice"), secret)
	buf[0] ^= 0xff
	mustVerify(t, v, tok)
}

func TestVerifyConcurrent(t *testing.T) {
	v := newVerifier(t, Config{HMACSecret: secret})
	good := sign(t, jwt.SigningMethodHS256, validClaims("alice"), secret)
	bad := sign(t, jwt.SigningMethodHS256, validClaims("alice"), []byte("wrong"))
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for range 50 {
				if _, err := v.Verify(good); err != nil {
					t.Errorf("goroutine %d: %v", i, err)
					return
				}
				if _, err := v.Verify(bad); err == nil {
					t.Errorf("goroutine %d: bad token accepted", i)
					return
				}
			}
		})
	}
	wg.Wait()
}
