package auth

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/parley-mesh/parley/internal/auth/authtest"
	"github.com/parley-mesh/parley/internal/certtest"
)

// A PEM file may hold several keys (a rotation); tokens signed with any of
// them pass, with no kid needed.
func TestSeveralPublicKeysInOnePEM(t *testing.T) {
	ec, ed := authtest.NewES256(t, ""), authtest.NewEd25519(t, "")
	pubs := append(ec.PublicPEM(t), ed.PublicPEM(t)...)
	v := newVerifier(t, Config{PublicKeyPEM: pubs})
	mustVerify(t, v, ec.Token(t, "alice"))
	mustVerify(t, v, ed.Token(t, "bob"))
	if got := fmt.Sprint(v.Algorithms()); got != "[ES256 EdDSA]" {
		t.Errorf("Algorithms = %s", got)
	}
	other := authtest.NewES256(t, "")
	mustReject(t, v, other.Token(t, "mallory"), "bad signature")
}

// A leaf certificate with its chain appended yields the leaf's key only:
// the CA's key must not become a token key. Two unrelated certificates (a
// rotation) yield both.
func TestCertificateChainIsNotAKey(t *testing.T) {
	ca := certtest.NewCA(t, "ca")
	leaf := certtest.Issue(t, ca, "issuer", time.Now().Add(time.Hour))
	chain := append(append([]byte(nil), leaf.CertPEM...), ca.CertPEM...)

	keys, err := ParsePublicKeys(chain)
	if err != nil || len(keys) != 1 || !keys[0].(*ecdsa.PublicKey).Equal(&leaf.Key.PublicKey) {
		t.Fatalf("leaf+chain: %d keys, %v", len(keys), err)
	}
	v := newVerifier(t, Config{PublicKeyPEM: chain})
	mustVerify(t, v, (&authtest.Key{Signer: leaf.Key, Method: jwt.SigningMethodES256}).Token(t, "alice"))
	mustReject(t, v, (&authtest.Key{Signer: ca.Key, Method: jwt.SigningMethodES256}).Token(t, "mallory"), "bad signature")

	other := certtest.Issue(t, nil, "issuer-2", time.Now().Add(time.Hour))
	if keys, err := ParsePublicKeys(append(append([]byte(nil), leaf.CertPEM...), other.CertPEM...)); err != nil || len(keys) != 2 {
		t.Fatalf("two certificates: %d keys, %v", len(keys), err)
	}
	if _, err := ParsePublicKeys(append(append([]byte(nil), leaf.CertPEM...), leaf.KeyPEM...)); err == nil {
		t.Error("a private key among the public ones was accepted")
	}
}

func TestParseSecrets(t *testing.T) {
	got, err := ParseSecrets([]byte("  first-secret \n\n\tsecond-secret\r\n"))
	if err != nil || len(got) != 2 || string(got[0]) != "first-secret" || string(got[1]) != "second-secret" {
		t.Fatalf("got %q, %v", got, err)
	}
	if _, err := ParseSecrets([]byte(" \n \n")); err == nil {
		t.Error("a file of blank lines gave secrets")
	}
}

// Keys.Set swaps the keys under a running verifier: old, both, new.
func TestKeysRotateUnderAVerifier(t *testing.T) {
	s1, s2 := bytes.Repeat([]byte("1"), 32), bytes.Repeat([]byte("2"), 32)
	p1, p2 := authtest.NewES256(t, ""), authtest.NewES256(t, "")
	keySet := func(secrets [][]byte, pubs ...*authtest.Key) KeySet {
		var ks []crypto.PublicKey
		for _, p := range pubs {
			ks = append(ks, p.Signer.Public())
		}
		set, err := NewKeySet(secrets, ks)
		if err != nil {
			t.Fatal(err)
		}
		return set
	}
	keys := NewKeys(keySet([][]byte{s1}, p1))
	v := newVerifier(t, Config{Keys: keys})
	hs := func(s []byte) string { return sign(t, jwt.SigningMethodHS256, validClaims("alice"), s) }

	mustVerify(t, v, hs(s1))
	mustVerify(t, v, p1.Token(t, "alice"))
	mustReject(t, v, hs(s2), "bad signature")
	mustReject(t, v, p2.Token(t, "alice"), "bad signature")

	keys.Set(keySet([][]byte{s1, s2}, p1, p2))
	for _, tok := range []string{hs(s1), hs(s2), p1.Token(t, "alice"), p2.Token(t, "alice")} {
		mustVerify(t, v, tok)
	}

	keys.Set(keySet([][]byte{s2}, p2))
	mustReject(t, v, hs(s1), "bad signature")
	mustReject(t, v, p1.Token(t, "alice"), "bad signature")
	mustVerify(t, v, hs(s2))
	mustVerify(t, v, p2.Token(t, "alice"))

	// Without any ES256 key left, ES256 is no longer an accepted alg.
	keys.Set(keySet([][]byte{s2}))
	mustReject(t, v, p2.Token(t, "alice"), "unexpected alg")

	if _, err := NewVerifier(Config{Keys: keys, HMACSecret: s1}); err == nil {
		t.Error("Keys and a static secret together were accepted")
	}
}

func newJWKS(t *testing.T, url string, refresh, minRefresh time.Duration) *JWKS {
	t.Helper()
	j, err := NewJWKS(t.Context(), JWKSConfig{URL: url, Refresh: refresh, MinRefresh: minRefresh, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(j.Close)
	return j
}

func jwksVerifier(t *testing.T, j *JWKS, secrets ...[]byte) *Verifier {
	t.Helper()
	set, err := NewKeySet(secrets, nil)
	if err != nil {
		t.Fatal(err)
	}
	keys := NewKeys(set)
	keys.SetJWKS(j)
	return newVerifier(t, Config{Keys: keys})
}

// gather reads what c exports through a registry that checks it: each
// series' value by `name` or `name{label="value"}` (one label at most).
func gather(t *testing.T, c prometheus.Collector) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			name := f.GetName()
			for _, l := range m.GetLabel() {
				name += fmt.Sprintf("{%s=%q}", l.GetName(), l.GetValue())
			}
			out[name] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return out
}

func refreshes(t *testing.T, j *JWKS, result string) float64 {
	t.Helper()
	return gather(t, j)[`parley_edge_jwks_refreshes_total{result="`+result+`"}`]
}

// The rotation an identity provider does, against a JWKS endpoint on
// loopback: old key; old and new; new only; an unknown kid; the endpoint
// down, empty and broken (the last good set stays each time).
func TestJWKSRotation(t *testing.T) {
	idp := authtest.NewJWKS(t)
	k1, k2 := authtest.NewES256(t, "k1"), authtest.NewEd25519(t, "k2")
	idp.Serve(k1)
	// Refreshes here come from unknown kids only (every 50 ms at most).
	j := newJWKS(t, idp.URL(), time.Hour, 50*time.Millisecond)
	v := jwksVerifier(t, j)
	if j.Len() != 1 || idp.Hits() != 1 || refreshes(t, j, "ok") != 1 {
		t.Fatalf("start: %d keys, %d fetches, %v ok", j.Len(), idp.Hits(), refreshes(t, j, "ok"))
	}

	// Old key.
	mustVerify(t, v, k1.Token(t, "alice"))
	mustReject(t, v, k2.Token(t, "bob"), "unknown key") // fetched again: still not there
	if idp.Hits() != 2 {
		t.Errorf("unknown kid: %d fetches, want 2", idp.Hits())
	}

	// Both: the new kid is fetched at once.
	idp.Serve(k1, k2)
	mustVerify(t, v, k2.Token(t, "bob"))
	mustVerify(t, v, k1.Token(t, "alice"))
	if j.Len() != 2 {
		t.Errorf("%d keys, want 2", j.Len())
	}

	// New only: k1 is dropped at the next fetch (here forced by a kid
	// nobody has).
	idp.Serve(k2)
	stranger := authtest.NewES256(t, "k9")
	mustReject(t, v, stranger.Token(t, "mallory"), "unknown key")
	mustReject(t, v, k1.Token(t, "alice"), "unknown key")
	mustVerify(t, v, k2.Token(t, "bob"))
	mustVerify(t, v, (&authtest.Key{Signer: k2.Signer, Method: k2.Method}).Token(t, "bob")) // no kid: every key is tried

	// Down, then serving an empty set, garbage, and a set behind 2 MiB of
	// padding: each fetch fails and the last good set (k2) stays.
	okBefore, errBefore := refreshes(t, j, "ok"), refreshes(t, j, "error")
	huge := append([]byte(`{"pad":"`+strings.Repeat("x", 2<<20)+`",`), authtest.SetJSON(t, authtest.NewES256(t, "k9"))[1:]...)
	for i, bad := range []func(){
		func() { idp.SetDown(true) },
		func() { idp.ServeRaw([]byte(`{"keys":[]}`)) },
		func() { idp.ServeRaw([]byte(`not json`)) },
		func() { idp.ServeRaw(huge) },
	} {
		bad()
		hits := idp.Hits()
		mustReject(t, v, stranger.Token(t, "mallory"), "unknown key")
		if idp.Hits() != hits+1 {
			t.Errorf("bad endpoint %d: no fetch for an unknown kid", i)
		}
		mustVerify(t, v, k2.Token(t, "bob"))
		if j.Len() != 1 {
			t.Errorf("bad endpoint %d: %d keys in use, want the last good 1", i, j.Len())
		}
	}
	if refreshes(t, j, "ok") != okBefore || refreshes(t, j, "error") != errBefore+4 {
		t.Errorf("refreshes ok %v→%v, error %v→%v; want 4 more errors only", okBefore, refreshes(t, j, "ok"), errBefore, refreshes(t, j, "error"))
	}
	got := gather(t, j)
	if got["parley_edge_jwks_unknown_kid_total"] < 5 || got["parley_edge_jwks_keys"] != 1 ||
		got["parley_edge_jwks_last_success_timestamp_seconds"] < float64(time.Now().Add(-time.Minute).Unix()) || len(got) != 5 {
		t.Errorf("metrics %v: want 5 series, at least 5 unknown kids, 1 key, a recent success", got)
	}

	// Back up with a third key: picked up at its first token.
	k3 := authtest.NewES256(t, "k3")
	idp.Serve(k2, k3)
	mustVerify(t, v, k3.Token(t, "carol"))
}

// An unknown kid fetches the set at most once per MinRefresh: a flood of
// made-up kids costs the endpoint one request, and is refused at once.
func TestJWKSUnknownKidRateLimited(t *testing.T) {
	idp := authtest.NewJWKS(t)
	k1 := authtest.NewES256(t, "k1")
	idp.Serve(k1)
	j := newJWKS(t, idp.URL(), time.Hour, time.Hour)
	v := jwksVerifier(t, j)
	start := time.Now()
	var wg sync.WaitGroup
	for i := range 20 {
		tok := authtest.NewES256(t, fmt.Sprintf("forged-%d", i)).Token(t, "mallory")
		wg.Go(func() {
			if _, err := v.Verify(tok); err == nil {
				t.Error("a token with a made-up kid passed")
			}
		})
	}
	wg.Wait()
	if got := idp.Hits(); got != 2 {
		t.Errorf("%d fetches for 20 unknown kids, want 2 (start, one refresh)", got)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("refusing 20 unknown kids took %v: they waited for the rate limit", d)
	}
	mustVerify(t, v, k1.Token(t, "alice"))
}

// The set is also fetched every Refresh with no token asking, which is how
// a retired key goes away.
func TestJWKSPeriodicRefresh(t *testing.T) {
	idp := authtest.NewJWKS(t)
	k1, k2 := authtest.NewES256(t, "k1"), authtest.NewES256(t, "k2")
	idp.Serve(k1)
	j := newJWKS(t, idp.URL(), 20*time.Millisecond, time.Hour)
	idp.Serve(k2)
	deadline := time.Now().Add(10 * time.Second)
	for idp.Hits() < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("%d fetches in 10s with a 20ms refresh", idp.Hits())
		}
		time.Sleep(10 * time.Millisecond)
	}
	v := jwksVerifier(t, j)
	mustVerify(t, v, k2.Token(t, "bob"))
}

// An endpoint down at start is no start-up failure: no key until it comes
// back, then the first token picks the set up.
func TestJWKSDownAtStart(t *testing.T) {
	idp := authtest.NewJWKS(t)
	k1 := authtest.NewES256(t, "k1")
	idp.SetDown(true)
	j := newJWKS(t, idp.URL(), time.Hour, 20*time.Millisecond)
	v := jwksVerifier(t, j)
	if j.Len() != 0 || refreshes(t, j, "error") != 1 {
		t.Fatalf("%d keys, %v errors", j.Len(), refreshes(t, j, "error"))
	}
	mustReject(t, v, k1.Token(t, "alice"), "unknown key")
	idp.Serve(k1)
	mustVerify(t, v, k1.Token(t, "alice"))
}

// A JWKS is public: a symmetric ("oct") key in it never verifies HS256
// tokens, and "enc" keys never verify anything.
func TestJWKSNeverUsesSecretsOrEncryptionKeys(t *testing.T) {
	idp := authtest.NewJWKS(t)
	leaked := bytes.Repeat([]byte("x"), 32)
	store := jwkset.NewMemoryStorage()
	oct, err := jwkset.NewJWKFromKey(leaked, jwkset.JWKOptions{
		Marshal: jwkset.JWKMarshalOptions{Private: true}, Metadata: jwkset.JWKMetadataOptions{KID: "hs", ALG: jwkset.AlgHS256},
	})
	if err != nil {
		t.Fatal(err)
	}
	enc, sig := authtest.NewES256(t, "enc"), authtest.NewES256(t, "sig")
	encJWK, err := jwkset.NewJWKFromKey(enc.Signer.Public(), jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: "enc", USE: jwkset.UseEnc}})
	if err != nil {
		t.Fatal(err)
	}
	sigJWK, err := jwkset.NewJWKFromKey(sig.Signer.Public(), jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: "sig"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []jwkset.JWK{oct, encJWK, sigJWK} {
		if err := store.KeyWrite(context.Background(), k); err != nil {
			t.Fatal(err)
		}
	}
	body, err := store.JSONPrivate(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	idp.ServeRaw(body)
	j := newJWKS(t, idp.URL(), time.Hour, time.Hour)
	if j.Len() != 1 {
		t.Errorf("%d usable keys, want 1 (the sig one)", j.Len())
	}
	forged := jwt.NewWithClaims(jwt.SigningMethodHS256, validClaims("mallory"))
	forged.Header["kid"] = "hs"
	tok, err := forged.SignedString(leaked)
	if err != nil {
		t.Fatal(err)
	}
	mustReject(t, jwksVerifier(t, j), tok, "unexpected alg")
	mustReject(t, jwksVerifier(t, j, secret), tok, "bad signature")
	mustReject(t, jwksVerifier(t, j), enc.Token(t, "mallory"), "unknown key")
	mustVerify(t, jwksVerifier(t, j), sig.Token(t, "alice"))
}
