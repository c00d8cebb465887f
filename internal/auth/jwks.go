package auth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
)

// JWKSConfig configures the keys of an identity provider's JWKS endpoint.
type JWKSConfig struct {
	URL string
	// Refresh is how often the set is fetched again (default 15m): keys
	// the provider retired are dropped then.
	Refresh time.Duration
	// MinRefresh is the least time between two fetches made because a
	// token named a kid the set lacks (default 1m): a provider that starts
	// signing with a new key is picked up at once, while tokens with made-up
	// kids cannot make the edge hammer the endpoint.
	MinRefresh time.Duration
	// Timeout bounds one fetch (default 5s), and so how long the upgrade of
	// a token with an unknown kid may wait for its fetch.
	Timeout time.Duration
	// Client makes the requests; nil is a plain client with Timeout.
	Client *http.Client
	Logger *slog.Logger
}

// JWKS is the key set of a JWKS endpoint, fetched and cached by
// MicahParks/keyfunc (the companion of golang-jwt): tokens are matched to
// keys by kid, an unknown kid triggers a rate-limited fetch, and a failed
// fetch keeps the last good set. It is a prometheus.Collector of its own
// metrics.
type JWKS struct {
	url    string
	kf     keyfunc.Keyfunc
	ctx    context.Context
	cancel context.CancelFunc
	log    *slog.Logger

	loaded      atomic.Int64 // usable keys in the last good set
	refreshes   *prometheus.CounterVec
	keys        prometheus.GaugeFunc
	lastSuccess prometheus.Gauge
	unknownKID  prometheus.Counter
}

// errNoUsableKey refuses a fetched set without one signing key the edge can
// use: an endpoint that briefly serves an empty or broken set (a
// misconfigured proxy's "{}") must not lock every client out, so the last
// good set stays.
var errNoUsableKey = errors.New("the fetched JWKS holds no RSA, EC or Ed25519 signing key; keeping the last good set")

// NewJWKS fetches the set once and starts refreshing it until ctx ends or
// Close. An endpoint that is down at start is not an error: the edge starts
// with no JWKS key (tokens signed with one are refused), logs it, and keeps
// trying (every Refresh, and at most every MinRefresh for a token with a
// kid).
func NewJWKS(ctx context.Context, cfg JWKSConfig) (*JWKS, error) {
	if cfg.Refresh <= 0 {
		cfg.Refresh = 15 * time.Minute
	}
	if cfg.MinRefresh <= 0 {
		cfg.MinRefresh = time.Minute
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: cfg.Timeout, Transport: limitBody{http.DefaultTransport}}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	j := &JWKS{
		url: cfg.URL,
		log: cfg.Logger.With("jwks", cfg.URL),
		refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "parley_edge_jwks_refreshes_total",
			Help: "Fetches of the JWKS endpoint by result (ok, error); on error the last good key set stays in use.",
		}, []string{"result"}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "parley_edge_jwks_last_success_timestamp_seconds",
			Help: "Unix time of the last successful JWKS fetch (0: none yet).",
		}),
		unknownKID: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "parley_edge_jwks_unknown_kid_total",
			Help: "Tokens whose kid the JWKS did not hold, even after a refresh (if the rate limit allowed one).",
		}),
	}
	j.keys = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "parley_edge_jwks_keys",
		Help: "Signing keys in the JWKS key set in use.",
	}, func() float64 { return float64(j.loaded.Load()) })
	j.refreshes.WithLabelValues("ok")
	j.refreshes.WithLabelValues("error")
	j.ctx, j.cancel = context.WithCancel(ctx)

	store, err := jwkset.NewStorageFromHTTP(cfg.URL, jwkset.HTTPClientStorageOptions{
		Client:                    cfg.Client,
		Ctx:                       j.ctx,
		HTTPTimeout:               cfg.Timeout,
		NoErrorReturnFirstHTTPReq: true,
		RefreshErrorHandler:       j.failed,
		RefreshInterval:           cfg.Refresh,
		Storage:                   &checkedStore{MemoryJWKSet: jwkset.NewMemoryStorage(), j: j},
	})
	if err != nil {
		j.cancel()
		return nil, fmt.Errorf("jwks %s: %w", cfg.URL, err)
	}
	client, err := jwkset.NewHTTPClient(jwkset.HTTPClientOptions{
		HTTPURLs: map[string]jwkset.Storage{cfg.URL: store},
		// Burst 1: the first unknown kid fetches at once, the next only
		// MinRefresh later. A token arriving while no fetch is allowed
		// within Timeout is refused at once instead of queueing.
		RefreshUnknownKID: rate.NewLimiter(rate.Every(cfg.MinRefresh), 1),
		RateLimitWaitMax:  cfg.Timeout,
	})
	if err != nil {
		j.cancel()
		return nil, fmt.Errorf("jwks %s: %w", cfg.URL, err)
	}
	j.kf, err = keyfunc.New(keyfunc.Options{
		Ctx:     j.ctx,
		Storage: client,
		// "enc" keys encrypt, they never sign; keys without "use" are
		// signing keys in every provider's JWKS.
		UseWhitelist: []jwkset.USE{jwkset.UseSig, ""},
	})
	if err != nil {
		j.cancel()
		return nil, fmt.Errorf("jwks %s: %w", cfg.URL, err)
	}
	if j.loaded.Load() == 0 {
		j.log.Error("JWKS endpoint gave no usable key at start: tokens signed with its keys are refused until it does; retrying")
	} else {
		j.log.Info("JWKS loaded", "keys", j.loaded.Load())
	}
	return j, nil
}

// Close stops the refreshes.
func (j *JWKS) Close() { j.cancel() }

// Len is the number of signing keys in use.
func (j *JWKS) Len() int { return int(j.loaded.Load()) }

// Describe implements prometheus.Collector.
func (j *JWKS) Describe(ch chan<- *prometheus.Desc) {
	j.refreshes.Describe(ch)
	j.keys.Describe(ch)
	j.lastSuccess.Describe(ch)
	j.unknownKID.Describe(ch)
}

// Collect implements prometheus.Collector.
func (j *JWKS) Collect(ch chan<- prometheus.Metric) {
	j.refreshes.Collect(ch)
	j.keys.Collect(ch)
	j.lastSuccess.Collect(ch)
	j.unknownKID.Collect(ch)
}

func (j *JWKS) failed(_ context.Context, err error) {
	j.refreshes.WithLabelValues("error").Inc()
	j.log.Warn("JWKS refresh failed; the last good key set stays in use", "keys", j.loaded.Load(), "err", err)
}

func (j *JWKS) succeeded(n int) {
	prev := j.loaded.Swap(int64(n))
	j.refreshes.WithLabelValues("ok").Inc()
	j.lastSuccess.SetToCurrentTime()
	if int64(n) != prev {
		j.log.Info("JWKS key set changed", "keys", n, "before", prev)
	}
}

// keysFor returns the JWKS keys that may have signed tok: the one its kid
// names (fetched anew, rate-limited, when the set lacks it), or every key
// when it names none. Symmetric ("oct") keys are never returned: a JWKS is
// served to anyone who asks, so a secret in it is no secret.
func (j *JWKS) keysFor(tok *jwt.Token) []crypto.PublicKey {
	got, err := j.kf.KeyfuncCtx(j.ctx)(tok)
	if err != nil {
		if _, ok := tok.Header[jwkset.HeaderKID]; ok {
			j.unknownKID.Inc()
		}
		j.log.Debug("no JWKS key for a token", "kid", tok.Header[jwkset.HeaderKID], "err", err)
		return nil
	}
	var all []any
	if set, ok := got.(jwt.VerificationKeySet); ok {
		for _, k := range set.Keys {
			all = append(all, k)
		}
	} else {
		all = []any{got}
	}
	var out []crypto.PublicKey
	for _, k := range all {
		if signingKey(k) {
			out = append(out, k)
		}
	}
	return out
}

func signingKey(k any) bool {
	switch k.(type) {
	case *rsa.PublicKey, *ecdsa.PublicKey, ed25519.PublicKey:
		return true
	}
	return false
}

// maxJWKSBytes bounds a JWKS response: real ones are a few KiB, and the
// decoder would otherwise hold whatever a broken endpoint streams.
const maxJWKSBytes = 1 << 20

// limitBody cuts responses at maxJWKSBytes; the truncated JSON then fails
// to decode, which keeps the last good set.
type limitBody struct{ base http.RoundTripper }

func (l limitBody) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := l.base.RoundTrip(r)
	if err == nil {
		resp.Body = struct {
			io.Reader
			io.Closer
		}{io.LimitReader(resp.Body, maxJWKSBytes), resp.Body}
	}
	return resp, err
}

// checkedStore is the JWKS cache. keyfunc replaces its contents after every
// successful fetch, which makes it the one place that sees a success (and
// can refuse a set without usable keys, keeping the last good one).
type checkedStore struct {
	*jwkset.MemoryJWKSet
	j *JWKS
}

func (s *checkedStore) KeyReplaceAll(ctx context.Context, given []jwkset.JWK) error {
	n := 0
	for _, k := range given {
		if use := k.Marshal().USE; (use == jwkset.UseSig || use == "") && signingKey(publicOf(k.Key())) {
			n++
		}
	}
	if n == 0 {
		return errNoUsableKey
	}
	if err := s.MemoryJWKSet.KeyReplaceAll(ctx, given); err != nil {
		return err
	}
	s.j.succeeded(n)
	return nil
}

// publicOf is the public half of a private JWK (an endpoint that serves
// private keys is broken, but their public halves still verify).
func publicOf(k any) any {
	if p, ok := k.(interface{ Public() crypto.PublicKey }); ok {
		return p.Public()
	}
	return k
}
