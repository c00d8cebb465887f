package parley

import (
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// tracingComponents are the Deployments that trace (docs/tracing.md).
var tracingComponents = []string{"edge", "presence", "archiver"}

// otel.* renders the standard OTEL_* variables into every component: the
// endpoint, the sampler, the resource attributes with the pod's namespace
// and name (K8S_POD_NAME defined before the variable that refers to it), the
// headers from a Secret, otel.extraEnv, and a component's own extraEnv last
// (so it overrides).
func TestOtelEnv(t *testing.T) {
	vals := map[string]any{
		"otel": map[string]any{
			"endpoint":           "http://$(K8S_NODE_IP):4318",
			"sampler":            "parentbased_traceidratio",
			"samplerArg":         "0.25",
			"resourceAttributes": map[string]any{"deployment.environment.name": "production"},
			"headers":            map[string]any{"existingSecret": "otel-auth", "key": "h"},
			"extraEnv":           []any{map[string]any{"name": "OTEL_EXPORTER_OTLP_COMPRESSION", "value": "gzip"}},
		},
		"archiver": map[string]any{"extraEnv": []any{map[string]any{"name": "OTEL_SERVICE_NAME", "value": "chat-archiver"}}},
	}
	runLint(t, vals)
	m := render(t, vals)
	for _, comp := range tracingComponents {
		c := container(t, get[*appsv1.Deployment](t, m, "Deployment", fullName(comp)))
		e := env(c)
		for name, want := range map[string]string{
			"OTEL_EXPORTER_OTLP_ENDPOINT":    "http://$(K8S_NODE_IP):4318",
			"OTEL_TRACES_SAMPLER":            "parentbased_traceidratio",
			"OTEL_TRACES_SAMPLER_ARG":        "0.25",
			"OTEL_RESOURCE_ATTRIBUTES":       "k8s.namespace.name=" + namespace + ",k8s.pod.name=$(K8S_POD_NAME),deployment.environment.name=production",
			"OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
		} {
			if got := e[name].Value; got != want {
				t.Errorf("%s: %s = %q, want %q", comp, name, got, want)
			}
		}
		if h := e["OTEL_EXPORTER_OTLP_HEADERS"].ValueFrom; h == nil || h.SecretKeyRef == nil || h.SecretKeyRef.Name != "otel-auth" || h.SecretKeyRef.Key != "h" {
			t.Errorf("%s: OTEL_EXPORTER_OTLP_HEADERS %+v, want from Secret otel-auth key h", comp, e["OTEL_EXPORTER_OTLP_HEADERS"])
		}
		for name, field := range map[string]string{"K8S_POD_NAME": "metadata.name", "K8S_NODE_IP": "status.hostIP"} {
			if f := e[name].ValueFrom; f == nil || f.FieldRef == nil || f.FieldRef.FieldPath != field {
				t.Errorf("%s: %s %+v, want the pod's %s", comp, name, e[name], field)
			}
		}
		// Kubernetes expands $(VAR) only for variables defined earlier.
		order := func(name string) int {
			return slices.IndexFunc(c.Env, func(v corev1.EnvVar) bool { return v.Name == name })
		}
		if order("K8S_POD_NAME") > order("OTEL_RESOURCE_ATTRIBUTES") || order("K8S_NODE_IP") > order("OTEL_EXPORTER_OTLP_ENDPOINT") {
			t.Errorf("%s: K8S_* must come before the OTEL_* variables that refer to them: %v", comp, c.Env)
		}
		// The binary's own default name unless overridden; an override
		// comes after otel's variables.
		switch svc := order("OTEL_SERVICE_NAME"); {
		case comp == "archiver" && (svc < order("OTEL_EXPORTER_OTLP_ENDPOINT") || e["OTEL_SERVICE_NAME"].Value != "chat-archiver"):
			t.Errorf("archiver: OTEL_SERVICE_NAME %+v at %d", e["OTEL_SERVICE_NAME"], svc)
		case comp != "archiver" && svc >= 0:
			t.Errorf("%s: OTEL_SERVICE_NAME set: %+v", comp, e["OTEL_SERVICE_NAME"])
		}
	}
}

// Without otel.endpoint no OTEL_* (nor K8S_*) variable renders: the
// binaries trace nothing; otel.extraEnv still does.
func TestOtelOffByDefault(t *testing.T) {
	for _, vals := range []map[string]any{nil, valuesFile(t, "ci/production-values.yaml")} {
		m := render(t, vals)
		for _, comp := range tracingComponents {
			for _, v := range container(t, get[*appsv1.Deployment](t, m, "Deployment", fullName(comp))).Env {
				if strings.HasPrefix(v.Name, "OTEL_") || strings.HasPrefix(v.Name, "K8S_") {
					t.Errorf("%s: %s set without otel.endpoint", comp, v.Name)
				}
			}
		}
	}
	m := render(t, map[string]any{"otel": map[string]any{"extraEnv": []any{map[string]any{"name": "OTEL_TRACES_EXPORTER", "value": "otlp"}}}})
	for _, comp := range tracingComponents {
		if e := env(container(t, get[*appsv1.Deployment](t, m, "Deployment", fullName(comp)))); e["OTEL_TRACES_EXPORTER"].Value != "otlp" || e["OTEL_EXPORTER_OTLP_ENDPOINT"].Value != "" {
			t.Errorf("%s: otel.extraEnv alone: %v", comp, e)
		}
	}
}

// The schema refuses an endpoint that is not http(s), OTLP over gRPC's
// habit of a bare host:port, an unknown sampler and a ratio above 1.
func TestSchemaRejectsBadOtelValues(t *testing.T) {
	c := loadChart(t)
	for _, otel := range []map[string]any{
		{"endpoint": "otel-collector:4317"},
		{"endpoint": "grpc://otel-collector:4317"},
		{"sampler": "jaeger_remote"},
		{"samplerArg": "1.5"},
		{"resourceAttributes": map[string]any{"n": 1}},
		{"enabled": true},
	} {
		if _, err := renderValues(c, map[string]any{"otel": otel}); err == nil {
			t.Errorf("otel %v accepted", otel)
		}
	}
}
