package auth

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
)

// KeySet is one generation of the keys read from files or flags: the
// shared secrets and public keys a Verifier checks signatures with. During
// a rotation it holds the old and the new key at once, so tokens signed
// with either pass until the old one is dropped from the file.
type KeySet struct {
	Secrets [][]byte           // HS256/384/512
	Public  []crypto.PublicKey // *rsa.PublicKey, *ecdsa.PublicKey, ed25519.PublicKey
}

// NewKeySet checks every key's type and copies the secrets, so a caller
// reusing its buffers cannot change a key under a running verifier.
func NewKeySet(secrets [][]byte, public []crypto.PublicKey) (KeySet, error) {
	var s KeySet
	for i, sec := range secrets {
		if len(sec) == 0 {
			return KeySet{}, fmt.Errorf("secret %d is empty", i+1)
		}
		s.Secrets = append(s.Secrets, slices.Clone(sec))
	}
	for _, k := range public {
		if _, err := methodsForKey(k); err != nil {
			return KeySet{}, err
		}
		s.Public = append(s.Public, k)
	}
	return s, nil
}

// Empty reports whether the set holds no key at all.
func (s KeySet) Empty() bool { return len(s.Secrets) == 0 && len(s.Public) == 0 }

// methods lists the algorithms the set verifies, in a stable order.
func (s KeySet) methods() []string {
	var out []string
	if len(s.Secrets) > 0 {
		out = append(out, "HS256", "HS384", "HS512")
	}
	for _, k := range s.Public {
		ms, _ := methodsForKey(k) // checked by NewKeySet
		for _, m := range ms {
			if !slices.Contains(out, m) {
				out = append(out, m)
			}
		}
	}
	return out
}

// ParseSecrets reads a shared-secret file: one secret per line, so that a
// rotation can put the new secret next to the old one. Surrounding
// whitespace and blank lines are dropped (editors and `echo` add newlines).
// How long a secret must be is the caller's policy.
func ParseSecrets(data []byte) ([][]byte, error) {
	var out [][]byte
	for line := range bytes.SplitSeq(data, []byte("\n")) {
		if line = bytes.TrimSpace(line); len(line) > 0 {
			out = append(out, line)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("it holds no secret (it is empty)")
	}
	return out, nil
}

// ParsePublicKeys reads every key of a PEM file ("PUBLIC KEY", "RSA PUBLIC
// KEY" or "CERTIFICATE" blocks): several keys are accepted at once during a
// rotation. A certificate that signed the certificate before it is that
// one's chain, not a key of its own, and is skipped: a leaf certificate file
// with its chain appended yields the leaf's key only (accepting the CA's key
// would let anything the CA signs mint tokens).
func ParsePublicKeys(data []byte) ([]crypto.PublicKey, error) {
	var (
		keys []crypto.PublicKey
		prev *x509.Certificate
	)
	for n := 1; ; n++ {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type == "CERTIFICATE" {
			cert, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("block %d: parse certificate: %w", n, err)
			}
			chain := prev != nil && prev.CheckSignatureFrom(cert) == nil
			prev = cert
			if chain {
				continue
			}
			keys = append(keys, cert.PublicKey)
			continue
		}
		prev = nil
		k, err := parsePublicKeyBlock(block)
		if err != nil {
			return nil, fmt.Errorf("block %d: %w", n, err)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, errors.New("no PEM block found")
	}
	for i, k := range keys {
		if _, err := methodsForKey(k); err != nil {
			return nil, fmt.Errorf("key %d: %w", i+1, err)
		}
	}
	return keys, nil
}

func parsePublicKeyBlock(block *pem.Block) (crypto.PublicKey, error) {
	switch block.Type {
	case "PUBLIC KEY":
		pub, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse PKIX public key: %w", err)
		}
		return pub, nil
	case "RSA PUBLIC KEY":
		pub, err := x509.ParsePKCS1PublicKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse PKCS#1 public key: %w", err)
		}
		return pub, nil
	default:
		if strings.Contains(block.Type, "PRIVATE KEY") {
			// Deriving the public half would work, but the edge has no
			// business holding the issuer's signing key.
			return nil, fmt.Errorf("got a %q; configure the public key instead", block.Type)
		}
		return nil, fmt.Errorf("unsupported PEM block %q (want PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE)", block.Type)
	}
}

// Keys are the verification keys of a running edge: a KeySet that reloads
// of the key files replace, and the keys of a JWKS endpoint. A Verifier
// reads them at every token, so a rotation takes effect for the next token
// without touching connections that are already open. Safe for concurrent
// use.
type Keys struct {
	set  atomic.Pointer[KeySet]
	jwks atomic.Pointer[JWKS]
}

// NewKeys starts with set (which may be empty when a JWKS will be attached).
func NewKeys(set KeySet) *Keys {
	k := &Keys{}
	k.set.Store(&set)
	return k
}

// Set replaces the file keys. Tokens verified from now on use set only.
func (k *Keys) Set(set KeySet) { k.set.Store(&set) }

// Current is the file keys in use.
func (k *Keys) Current() KeySet { return *k.set.Load() }

// SetJWKS adds a JWKS endpoint's keys to the file keys.
func (k *Keys) SetJWKS(j *JWKS) { k.jwks.Store(j) }

// asymmetricMethods are what a JWKS may sign with: its key types are not
// known until it is fetched, and may change at every refresh.
var asymmetricMethods = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}

// snapshot is what one Verify uses: read once, so a reload in the middle of
// a verification cannot mix two generations.
type snapshot struct {
	set     KeySet
	jwks    *JWKS
	methods []string
}

func (k *Keys) snapshot() snapshot {
	s := snapshot{set: *k.set.Load(), jwks: k.jwks.Load()}
	s.methods = s.set.methods()
	if s.jwks != nil {
		for _, m := range asymmetricMethods {
			if !slices.Contains(s.methods, m) {
				s.methods = append(s.methods, m)
			}
		}
	}
	return s
}

// fits reports whether key can verify alg at all, so a token is only tried
// against the keys that could have signed it.
func fits(key crypto.PublicKey, alg string) bool {
	switch k := key.(type) {
	case *rsa.PublicKey:
		return strings.HasPrefix(alg, "RS") || strings.HasPrefix(alg, "PS")
	case ed25519.PublicKey:
		return alg == "EdDSA"
	case *ecdsa.PublicKey:
		ms, err := methodsForKey(k)
		return err == nil && slices.Contains(ms, alg)
	}
	return false
}
