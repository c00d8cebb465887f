package parley

import (
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chartutil"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"
)

// edgeProbes are the edge container's three probes.
func edgeProbes(c corev1.Container) map[string]*corev1.Probe {
	return map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe, "startup": c.StartupProbe}
}

// TLS on the edge pods: the Secret is mounted as a directory (so its
// updates reach the edge, which reloads it), the files are wired to
// --tls-cert/--tls-key, probes and scrapes use https, and the NOTES give a
// wss:// URL. A JWKS URL alone is a configured key: no warning.
func TestEdgeTLSAndJWKS(t *testing.T) {
	vals := map[string]any{
		"jwt": map[string]any{"jwksUrl": "https://id.example.com/.well-known/jwks.json", "jwksRefresh": "5m", "jwksMinRefresh": "30s"},
		"edge": map[string]any{
			"tls":            map[string]any{"existingSecret": "edge-tls", "certKey": "cert.pem", "keyKey": "key.pem"},
			"reloadInterval": "30s",
		},
		"metrics": map[string]any{"serviceMonitor": map[string]any{"enabled": true}},
	}
	runLint(t, vals)
	m := render(t, vals)
	d := checkEdge(t, m)
	c := container(t, d)
	e := env(c)
	for name, want := range map[string]string{
		"PARLEY_JWT_JWKS_URL":         "https://id.example.com/.well-known/jwks.json",
		"PARLEY_JWT_JWKS_REFRESH":     "5m",
		"PARLEY_JWT_JWKS_MIN_REFRESH": "30s",
		"PARLEY_RELOAD_INTERVAL":      "30s",
		"PARLEY_TLS_CERT":             "/etc/parley/tls/cert.pem",
		"PARLEY_TLS_KEY":              "/etc/parley/tls/key.pem",
	} {
		if got := e[name].Value; got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	for _, f := range []string{"PARLEY_TLS_CERT", "PARLEY_TLS_KEY"} {
		if s, k := secretFile(t, d, e[f].Value); s != "edge-tls" || "/etc/parley/tls/"+k != e[f].Value {
			t.Errorf("%s from %s/%s", f, s, k)
		}
	}
	for _, vm := range c.VolumeMounts {
		if vm.SubPath != "" {
			t.Errorf("mount %s uses subPath %q: the kubelet never updates it, a rotated key or certificate would not reach the edge", vm.Name, vm.SubPath)
		}
	}
	for name, p := range edgeProbes(c) {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Scheme != corev1.URISchemeHTTPS {
			t.Errorf("edge %s probe %+v: want HTTPS", name, p)
		}
	}
	presence := container(t, get[*appsv1.Deployment](t, m, "Deployment", fullName("presence")))
	if s := presence.ReadinessProbe.HTTPGet.Scheme; s != "" && s != corev1.URISchemeHTTP {
		t.Errorf("presence probe scheme %q: only the edge serves TLS", s)
	}
	if d.Spec.Template.Annotations["prometheus.io/scheme"] != "https" {
		t.Errorf("edge pod annotations %v: want prometheus.io/scheme https", d.Spec.Template.Annotations)
	}
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.Name == "jwt" {
			t.Error("a jwt volume without key files")
		}
	}

	// Two ServiceMonitors: the edges over https, the others over http;
	// each Service is scraped by exactly one.
	all := get[*ServiceMonitor](t, m, "ServiceMonitor", release+"-parley")
	edge := get[*ServiceMonitor](t, m, "ServiceMonitor", fullName("edge"))
	if ep := edge.Spec.Endpoints; len(ep) != 1 || ep[0].Scheme != "https" || !ep[0].TLSConfig.InsecureSkipVerify || ep[0].Port != "http" {
		t.Errorf("edge ServiceMonitor endpoints %+v", ep)
	}
	if ep := all.Spec.Endpoints; len(ep) != 1 || ep[0].Scheme != "" {
		t.Errorf("ServiceMonitor endpoints %+v", ep)
	}
	for _, comp := range []string{"edge", "presence", "archiver"} {
		svc := get[*corev1.Service](t, m, "Service", fullName(comp))
		n := 0
		for _, sm := range []*ServiceMonitor{all, edge} {
			sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
			if err != nil {
				t.Fatal(err)
			}
			if sel.Matches(labels.Set(svc.Labels)) {
				n++
			}
		}
		if n != 1 {
			t.Errorf("the %s Service is scraped by %d ServiceMonitors, want 1", comp, n)
		}
	}

	if strings.Contains(m.notes, "WARNING") || !strings.Contains(m.notes, "wss://127.0.0.1:8080/ws") {
		t.Errorf("notes:\n%s", m.notes)
	}
}

// Without edge.tls nothing of it renders: plain probes, one ServiceMonitor,
// no TLS variables; the reload and JWKS intervals have their defaults.
func TestEdgeWithoutTLS(t *testing.T) {
	m := render(t, map[string]any{"metrics": map[string]any{"serviceMonitor": map[string]any{"enabled": true}}})
	d := checkEdge(t, m)
	c := container(t, d)
	e := env(c)
	for _, name := range []string{"PARLEY_TLS_CERT", "PARLEY_TLS_KEY", "PARLEY_JWT_JWKS_URL"} {
		if _, ok := e[name]; ok {
			t.Errorf("%s set without a value for it", name)
		}
	}
	if e["PARLEY_RELOAD_INTERVAL"].Value != "10s" || e["PARLEY_JWT_JWKS_REFRESH"].Value != "15m" || e["PARLEY_JWT_JWKS_MIN_REFRESH"].Value != "1m" {
		t.Errorf("defaults: %v %v %v", e["PARLEY_RELOAD_INTERVAL"], e["PARLEY_JWT_JWKS_REFRESH"], e["PARLEY_JWT_JWKS_MIN_REFRESH"])
	}
	for name, p := range edgeProbes(c) {
		if p.HTTPGet.Scheme == corev1.URISchemeHTTPS {
			t.Errorf("%s probe over HTTPS without TLS", name)
		}
	}
	if _, ok := m.objs["ServiceMonitor/"+fullName("edge")]; ok {
		t.Error("an edge ServiceMonitor without TLS")
	}
	if sm := get[*ServiceMonitor](t, m, "ServiceMonitor", release+"-parley"); len(sm.Spec.Selector.MatchExpressions) != 0 {
		t.Errorf("selector %+v excludes something without TLS", sm.Spec.Selector)
	}
}

// The schema refuses a JWKS URL that is not http(s) and unitless reload
// intervals.
func TestSchemaRejectsBadRotationValues(t *testing.T) {
	c := loadChart(t)
	for _, tc := range []struct{ vals, want string }{
		{"jwt: {jwksUrl: ftp://id.example.com/jwks}", "jwksUrl"},
		{"jwt: {jwksUrl: id.example.com/jwks}", "jwksUrl"},
		{"jwt: {jwksRefresh: 15}", "jwksRefresh"},
		{"edge: {reloadInterval: ten}", "reloadInterval"},
		{"edge: {tls: {existingSecret: t, certKey: \"\"}}", "certKey"},
		{"edge: {tls: {secretName: t}}", "secretName"},
	} {
		var raw map[string]any
		if err := yaml.Unmarshal([]byte(tc.vals), &raw); err != nil {
			t.Fatal(err)
		}
		if _, err := renderValues(c, chartutil.Values(raw)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error naming %s", tc.vals, err, tc.want)
		}
	}
}
