package edge

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/parley-mesh/parley/protocol"
)

// This file is what the edge admits before a WebSocket exists: how many
// connections one user and one client address may hold, where a client's
// address comes from behind proxies, and which browser origins and Host
// names an insecure edge accepts.

// refusal is why admission.acquire said no.
type refusal int

const (
	admitted  refusal = iota
	edgeFull          // --max-connections
	userLimit         // --max-connections-per-user
	addrLimit         // --max-connections-per-ip
)

// admission counts connections per edge, per user and per client address
// from the moment an upgrade is let through until the connection's teardown
// ends (connGone), so the limits hold exactly however many upgrades race.
type admission struct {
	mu     sync.Mutex
	total  int
	users  map[string]int
	addrs  map[netip.Prefix]int
	leases map[*Conn]*lease
	// usersGauge and addrsGauge follow len(users) and len(addrs); nil
	// before Start.
	usersGauge, addrsGauge prometheus.Gauge

	// originLog and hostLog keep refusals from flooding the log: a hostile
	// page can make a browser retry as fast as it likes.
	originLog, hostLog logEvery
}

// lease is one admitted connection's place in the counts.
type lease struct {
	user     string
	addr     netip.Prefix // invalid: the address is unknown and not counted
	released bool         // under admission.mu
}

// acquire admits a connection of user from addr unless that would exceed a
// limit (0: none).
func (a *admission) acquire(cfg *Config, user string, addr netip.Prefix) (*lease, refusal) {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case cfg.MaxConnections > 0 && a.total >= cfg.MaxConnections:
		return nil, edgeFull
	case cfg.MaxConnsPerUser > 0 && a.users[user] >= cfg.MaxConnsPerUser:
		return nil, userLimit
	case addr.IsValid() && cfg.MaxConnsPerIP > 0 && a.addrs[addr] >= cfg.MaxConnsPerIP:
		return nil, addrLimit
	}
	if a.users == nil {
		a.users = make(map[string]int)
		a.addrs = make(map[netip.Prefix]int)
		a.leases = make(map[*Conn]*lease)
	}
	a.total++
	a.users[user]++
	if addr.IsValid() {
		a.addrs[addr]++
	}
	a.setGauges()
	return &lease{user: user, addr: addr}, admitted
}

// count is how many connections are admitted (for a cheap early refusal
// of a full edge, before the token is verified).
func (a *admission) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.total
}

// release gives the lease's place back; a second release does nothing.
func (a *admission) release(l *lease) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.releaseLocked(l)
}

func (a *admission) releaseLocked(l *lease) {
	if l == nil || l.released {
		return
	}
	l.released = true
	a.total--
	if a.users[l.user]--; a.users[l.user] <= 0 {
		delete(a.users, l.user)
	}
	if l.addr.IsValid() {
		if a.addrs[l.addr]--; a.addrs[l.addr] <= 0 {
			delete(a.addrs, l.addr)
		}
	}
	a.setGauges()
}

// bind hands the lease to the connection: releaseConn gives it back.
func (a *admission) bind(c *Conn, l *lease) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.leases[c] = l
}

// releaseConn releases the connection's lease, once however often it is
// called.
func (a *admission) releaseConn(c *Conn) {
	a.mu.Lock()
	defer a.mu.Unlock()
	l, ok := a.leases[c]
	if !ok {
		return
	}
	delete(a.leases, c)
	a.releaseLocked(l)
}

func (a *admission) setGauges() {
	if a.usersGauge != nil {
		a.usersGauge.Set(float64(len(a.users)))
		a.addrsGauge.Set(float64(len(a.addrs)))
	}
}

// logEvery lets one line through per period and counts the ones it held
// back, which the next line reports.
type logEvery struct {
	mu         sync.Mutex
	next       time.Time
	suppressed int
}

func (l *logEvery) allow(now time.Time, period time.Duration) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Before(l.next) {
		l.suppressed++
		return false, 0
	}
	l.next = now.Add(period)
	suppressed, l.suppressed = l.suppressed, 0
	return true, suppressed
}

// refusalLogPeriod is how often a refused origin or Host is logged at most.
const refusalLogPeriod = 5 * time.Second

// clientAddr is the address a connection is counted under: the TCP peer,
// or, when the peer is a trusted proxy, the right-most address of
// X-Forwarded-For that is not a trusted proxy (everything left of it was
// written by the client itself and proves nothing). Invalid when the peer
// address cannot be parsed.
func clientAddr(r *http.Request, trusted []netip.Prefix) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	addr := ap.Addr().Unmap().WithZone("")
	if !contains(trusted, addr) {
		return addr
	}
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	for i := len(hops) - 1; i >= 0; i-- {
		hop, ok := parseHop(hops[i])
		if !ok {
			// Garbage in the chain: the nearest trusted proxy is the best
			// address we know.
			break
		}
		addr = hop
		if !contains(trusted, addr) {
			break
		}
	}
	return addr
}

// parseHop parses one X-Forwarded-For entry: an address, with a port
// for the proxies that add one.
func parseHop(s string) (netip.Addr, bool) {
	s = strings.TrimSpace(s)
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap().WithZone(""), true
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap().WithZone(""), true
	}
	return netip.Addr{}, false
}

func contains(prefixes []netip.Prefix, a netip.Addr) bool {
	for _, p := range prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// limitKey is what the per-IP limit counts: an IPv4 address, or the /64 of
// an IPv6 one (a single host usually gets a whole /64 to pick from).
func limitKey(a netip.Addr) netip.Prefix {
	switch {
	case !a.IsValid():
		return netip.Prefix{}
	case a.Is4():
		return netip.PrefixFrom(a, 32)
	default:
		p, _ := a.Prefix(64)
		return p
	}
}

// keyString names what the per-IP limit counted: the address, or its /64.
func keyString(a netip.Addr, key netip.Prefix) string {
	if key.Bits() != a.BitLen() {
		return key.String()
	}
	return a.String()
}

// forwardedProto is the scheme a trusted proxy says the client used
// ("http" or "https"), or "" when there is no trusted word on it.
func forwardedProto(r *http.Request, trusted []netip.Prefix) string {
	if len(trusted) == 0 {
		return ""
	}
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil || !contains(trusted, ap.Addr().Unmap().WithZone("")) {
		return ""
	}
	v := r.Header.Values("X-Forwarded-Proto")
	if len(v) == 0 {
		return ""
	}
	last := v[len(v)-1]
	if i := strings.LastIndexByte(last, ','); i >= 0 {
		last = last[i+1:]
	}
	return strings.ToLower(strings.TrimSpace(last))
}

// isLoopbackHost reports whether host (no port) names this machine without
// asking DNS: localhost, *.localhost (browsers resolve those themselves),
// 127.0.0.0/8 or ::1. A DNS-rebinding page can only ever reach the edge
// under a name the attacker's DNS answers for, which is none of these.
func isLoopbackHost(host string) bool {
	host = strings.ToLower(host)
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"))
	return err == nil && a.Unmap().IsLoopback()
}

// hostOnly strips the port from a Host header or URL host.
func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return strings.TrimSuffix(strings.TrimPrefix(hostport, "["), "]")
}

// insecureHostAllowed is the DNS-rebinding guard of an insecure edge: the
// Host a request names must be this machine, an IP address (which no DNS
// answer can rebind), or a name the operator allowed.
func insecureHostAllowed(hostport string, allowed []string) bool {
	h := hostOnly(hostport)
	if isLoopbackHost(h) {
		return true
	}
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	for _, a := range allowed {
		if a == "*" || strings.EqualFold(a, h) {
			return true
		}
	}
	return false
}

// parseOrigin returns an Origin header's scheme and host[:port] when it is a
// plain http or https origin; "null" (sandboxed frames, file: pages) and
// every other scheme are not.
func parseOrigin(origin string) (scheme, host string, ok bool) {
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" || u.User != nil {
		return "", "", false
	}
	scheme = strings.ToLower(u.Scheme)
	if scheme != "http" && scheme != "https" {
		return "", "", false
	}
	return scheme, u.Host, true
}

// ParseTrustedProxies parses a comma-separated list of CIDR prefixes or
// bare addresses (--trusted-proxies).
func ParseTrustedProxies(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if p, err := netip.ParsePrefix(f); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(f)
		if err != nil {
			return nil, &net.ParseError{Type: "CIDR prefix or IP address", Text: f}
		}
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// guardHost wraps the edge's handler. On an insecure edge a request whose
// Host is not this machine, an IP address or an --allowed-hosts name gets
// 403 on every path: that is what a DNS-rebinding page looks like, and
// besides /ws it could read /metrics or /debug/pprof. A secure edge needs
// no such guard: a page cannot connect without a token.
func (e *Edge) guardHost(h http.Handler) http.Handler {
	if !e.cfg.Insecure {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if insecureHostAllowed(r.Host, e.cfg.AllowedHosts) {
			h.ServeHTTP(w, r)
			return
		}
		if r.URL.Path == "/ws" {
			e.metrics.ConnectsTotal.WithLabelValues("forbidden").Inc()
		}
		e.logRefusal(&e.admit.hostLog, "refused a request for a foreign Host (DNS-rebinding protection)",
			"host", r.Host, "path", r.URL.Path, "allow_with", "--allowed-hosts")
		httpError(w, http.StatusForbidden, protocol.CodeForbidden, fmt.Sprintf(
			"Host %q is not this machine: an insecure edge answers only localhost, IP addresses and --allowed-hosts names (DNS-rebinding protection)", r.Host))
	})
}

// logRefusal logs a refusal at most once per refusalLogPeriod per kind,
// with how many were held back since the last line.
func (e *Edge) logRefusal(l *logEvery, msg string, attrs ...any) {
	ok, suppressed := l.allow(time.Now(), refusalLogPeriod)
	if !ok {
		return
	}
	if suppressed > 0 {
		attrs = append(attrs, "suppressed", suppressed)
	}
	e.log.Warn(msg, attrs...)
}
