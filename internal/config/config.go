// Package config holds what every Parley binary configures and does the
// same way: flags with PARLEY_* environment fallbacks, logging, the NATS
// connection, the provision subcommand, the exit status (Main), and the
// rule by which a component fills its Config's defaults (Default).
package config

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// EnvName is the environment variable that backs a flag: --nats-creds is
// PARLEY_NATS_CREDS.
func EnvName(flagName string) string {
	return "PARLEY_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// NATS is how a component reaches an external NATS cluster.
type NATS struct {
	URLs     string // comma-separated; empty means "embed a server" where a component can
	Creds    string // .creds file (JWT + nkey seed)
	NKeyFile string // nkey seed file
	User     string
	Password string
	Token    string
	TLSCA    string
	TLSCert  string
	TLSKey   string
	Name     string // connection name shown by the server

	// Embedded says an empty --nats runs an embedded server (the edge's dev
	// mesh); without it --nats is required. It sets Register's help text.
	Embedded bool
}

// Register adds the NATS flags to fs.
func (n *NATS) Register(fs *flag.FlagSet) {
	urlHelp := "NATS server URL(s), comma-separated (required)"
	if n.Embedded {
		urlHelp = "NATS server URL(s), comma-separated; empty: run an embedded server (dev mode)"
	}
	fs.StringVar(&n.URLs, "nats", "", urlHelp)
	fs.StringVar(&n.Creds, "nats-creds", "", "NATS credentials file (.creds)")
	fs.StringVar(&n.NKeyFile, "nats-nkey", "", "NATS nkey seed file")
	fs.StringVar(&n.User, "nats-user", "", "NATS user")
	fs.StringVar(&n.Password, "nats-password", "", "NATS password")
	fs.StringVar(&n.Token, "nats-token", "", "NATS token")
	fs.StringVar(&n.TLSCA, "nats-tls-ca", "", "CA certificate file to verify the NATS servers")
	fs.StringVar(&n.TLSCert, "nats-tls-cert", "", "client certificate file for NATS mutual TLS")
	fs.StringVar(&n.TLSKey, "nats-tls-key", "", "client key file for NATS mutual TLS")
}

// Check validates the NATS flags as given: the URLs' form, the files they
// name (readable), and the TLS certificate and key given together. An empty
// --nats passes: whether that is allowed is the binary's to say.
func (n NATS) Check() error {
	if n.URLs != "" {
		if err := NATSURLs("nats", n.URLs); err != nil {
			return err
		}
	}
	for _, f := range []struct{ flag, path string }{
		{"nats-creds", n.Creds}, {"nats-nkey", n.NKeyFile},
		{"nats-tls-ca", n.TLSCA}, {"nats-tls-cert", n.TLSCert}, {"nats-tls-key", n.TLSKey},
	} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			return Usagef("--%s: %w", f.flag, err)
		}
	}
	if (n.TLSCert == "") != (n.TLSKey == "") {
		return Usagef("--nats-tls-cert and --nats-tls-key go together (NATS mutual TLS needs both)")
	}
	if n.Password != "" && n.User == "" {
		return Usagef("--nats-password needs --nats-user")
	}
	return nil
}

// Require is the check of a binary that cannot embed a server: --nats must
// be given; why says where the dev mesh has the component instead.
func (n NATS) Require(why string) error {
	if n.URLs == "" {
		return Usagef("--nats is required (%s)", why)
	}
	return nil
}

// AuthConfigured reports whether any NATS credential is set.
func (n NATS) AuthConfigured() bool {
	return n.Creds != "" || n.NKeyFile != "" || n.User != "" || n.Token != "" || n.TLSCert != ""
}

// Options turns the settings into nats.go options. Reconnection is unlimited
// with jitter: components must outlive a NATS rolling restart.
func (n NATS) Options(log *slog.Logger) ([]nats.Option, error) {
	opts := []nats.Option{
		nats.Name(n.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(250*time.Millisecond, time.Second),
		nats.RetryOnFailedConnect(false),
		nats.PingInterval(10 * time.Second),
		nats.MaxPingsOutstanding(3),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err == nil { // our own Close or Drain
				log.Debug("nats connection closed")
				return
			}
			log.Warn("nats disconnected", "err", err)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("nats reconnected", "url", nc.ConnectedUrlRedacted())
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			log.Error("nats async error", "subject", subject, "err", err)
		}),
	}
	if n.Creds != "" {
		opts = append(opts, nats.UserCredentials(n.Creds))
	}
	if n.NKeyFile != "" {
		o, err := nats.NkeyOptionFromSeed(n.NKeyFile)
		if err != nil {
			return nil, fmt.Errorf("nats nkey: %w", err)
		}
		opts = append(opts, o)
	}
	if n.User != "" {
		opts = append(opts, nats.UserInfo(n.User, n.Password))
	}
	if n.Token != "" {
		opts = append(opts, nats.Token(n.Token))
	}
	if n.TLSCA != "" {
		opts = append(opts, nats.RootCAs(n.TLSCA))
	}
	if n.TLSCert != "" || n.TLSKey != "" {
		if n.TLSCert == "" || n.TLSKey == "" {
			return nil, fmt.Errorf("nats mutual TLS needs both --nats-tls-cert and --nats-tls-key")
		}
		opts = append(opts, nats.ClientCert(n.TLSCert, n.TLSKey))
	}
	return opts, nil
}

// Connect dials the configured URLs.
func (n NATS) Connect(url string, log *slog.Logger, extra ...nats.Option) (*nats.Conn, error) {
	opts, err := n.Options(log)
	if err != nil {
		return nil, err
	}
	nc, err := nats.Connect(url, append(opts, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("connect to nats %s: %w", url, err)
	}
	return nc, nil
}

// Provision is a binary's provision subcommand, for a one-shot job such as
// the Helm chart's hook: connect, declare the binary's JetStream resources
// with provision (the idempotent create-or-update of package jetstream),
// log "provisioned" with what, and close.
func (n NATS) Provision(ctx context.Context, log *slog.Logger, provision func(context.Context, jetstream.JetStream) error, what ...any) error {
	nc, err := n.Connect(n.URLs, log)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	if err := provision(ctx, js); err != nil {
		return err
	}
	log.Info("provisioned", what...)
	return nil
}

// ReadFileFlag reads a file named by a flag. A file that cannot be read is
// a usage error naming the flag: the command line cannot work as given.
func ReadFileFlag(flagName, path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, Usagef("--%s: %w", flagName, err)
	}
	return b, nil
}
