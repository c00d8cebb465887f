package reload

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Certificate is a TLS certificate and key read from files, replaceable
// while the listener serves: every handshake asks GetCertificate, so a new
// certificate is used by the next connection while connections already
// established keep the session they negotiated (nothing is closed).
type Certificate struct {
	certFile, keyFile string
	cur               atomic.Pointer[tls.Certificate]
	notAfter          prometheus.GaugeFunc
}

// LoadCertificate reads the pair once; an error here is a configuration
// error (the edge does not start).
func LoadCertificate(certFile, keyFile string) (*Certificate, error) {
	c := &Certificate{certFile: certFile, keyFile: keyFile}
	if err := c.Reload(); err != nil {
		return nil, err
	}
	c.notAfter = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "parley_edge_tls_cert_expiry_timestamp_seconds",
		Help: "Unix time the edge's TLS certificate in use expires (alert well before it).",
	}, func() float64 { return float64(c.NotAfter().Unix()) })
	return c, nil
}

// Reload reads the files again and, if they hold a valid pair, serves it
// from the next handshake on. On error the previous certificate stays.
func (c *Certificate) Reload() error {
	cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		return fmt.Errorf("tls certificate %s, key %s: %w", c.certFile, c.keyFile, err)
	}
	if cert.Leaf == nil {
		// Go 1.23+ fills Leaf; parsed here only if an older behaviour
		// (GODEBUG x509keypairleaf=0) left it empty.
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return fmt.Errorf("tls certificate %s: %w", c.certFile, err)
		}
	}
	if time.Now().After(cert.Leaf.NotAfter) {
		// Serving it would fail every handshake of a verifying client;
		// the one in use may still be valid.
		return fmt.Errorf("tls certificate %s expired at %s", c.certFile, cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	c.cur.Store(&cert)
	return nil
}

// Files are the certificate and key files, for the Watcher.
func (c *Certificate) Files() []string { return []string{c.certFile, c.keyFile} }

// NotAfter is when the certificate in use expires.
func (c *Certificate) NotAfter() time.Time { return c.cur.Load().Leaf.NotAfter }

// GetCertificate is tls.Config.GetCertificate.
func (c *Certificate) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	cert := c.cur.Load()
	if cert == nil {
		return nil, errors.New("no certificate loaded")
	}
	return cert, nil
}

// TLSConfig is the edge listener's configuration. It offers HTTP/1.1 only:
// a WebSocket upgrade is an HTTP/1.1 request, and the edge's http.Server
// is not set up for HTTP/2.
func (c *Certificate) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: c.GetCertificate,
		NextProtos:     []string{"http/1.1"},
	}
}

// Describe implements prometheus.Collector.
func (c *Certificate) Describe(ch chan<- *prometheus.Desc) { c.notAfter.Describe(ch) }

// Collect implements prometheus.Collector.
func (c *Certificate) Collect(ch chan<- prometheus.Metric) { c.notAfter.Collect(ch) }
