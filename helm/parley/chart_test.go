// Package parley tests the Helm chart in-process with Helm's own Go packages
// (no helm binary needed): lint, render with the default and a
// production-like values file, decode every manifest strictly into the
// Kubernetes API types, and check the properties operators rely on.
package parley

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"

	"github.com/parley-mesh/parley/internal/config"
	"github.com/parley-mesh/parley/internal/gcpolicy"
)

const (
	release   = "chat"
	namespace = "parley"
)

var kubeVersion = &chartutil.KubeVersion{Version: "v1.31.0", Major: "1", Minor: "31"}

func loadChart(t *testing.T) *chart.Chart {
	t.Helper()
	c, err := loader.Load(".")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func valuesFile(t *testing.T, path string) map[string]any {
	t.Helper()
	v, err := chartutil.ReadValuesFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// renderValues coalesces and schema-validates vals as helm install does.
func renderValues(c *chart.Chart, vals map[string]any) (chartutil.Values, error) {
	caps := chartutil.DefaultCapabilities.Copy()
	caps.KubeVersion = *kubeVersion
	return chartutil.ToRenderValuesWithSchemaValidation(c, vals, chartutil.ReleaseOptions{
		Name: release, Namespace: namespace, Revision: 1, IsInstall: true,
	}, caps, false)
}

func renderErr(c *chart.Chart, vals map[string]any) (map[string]string, error) {
	rv, err := renderValues(c, vals)
	if err != nil {
		return nil, err
	}
	return engine.Engine{Strict: true}.Render(c, rv)
}

// manifests is a render decoded strictly: every object by kind and name.
type manifests struct {
	objs  map[string]any // "Kind/name" → typed object
	notes string
}

// ServiceMonitor is the part of the Prometheus Operator CRD the chart uses,
// decoded as strictly as the built-in kinds.
type ServiceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		NamespaceSelector struct {
			MatchNames []string `json:"matchNames"`
		} `json:"namespaceSelector"`
		Selector     metav1.LabelSelector `json:"selector"`
		TargetLabels []string             `json:"targetLabels"`
		Endpoints    []struct {
			Port              string `json:"port"`
			Path              string `json:"path"`
			Interval          string `json:"interval"`
			ScrapeTimeout     string `json:"scrapeTimeout"`
			Relabelings       []any  `json:"relabelings"`
			MetricRelabelings []any  `json:"metricRelabelings"`
			Scheme            string `json:"scheme"`
			TLSConfig         struct {
				InsecureSkipVerify bool   `json:"insecureSkipVerify"`
				ServerName         string `json:"serverName"`
			} `json:"tlsConfig"`
		} `json:"endpoints"`
	} `json:"spec"`
}

func newObject(apiVersion, kind string) (any, error) {
	switch apiVersion + "/" + kind {
	case "apps/v1/Deployment":
		return &appsv1.Deployment{}, nil
	case "v1/Service":
		return &corev1.Service{}, nil
	case "v1/Secret":
		return &corev1.Secret{}, nil
	case "v1/ConfigMap":
		return &corev1.ConfigMap{}, nil
	case "v1/ServiceAccount":
		return &corev1.ServiceAccount{}, nil
	case "v1/PersistentVolumeClaim":
		return &corev1.PersistentVolumeClaim{}, nil
	case "autoscaling/v2/HorizontalPodAutoscaler":
		return &autoscalingv2.HorizontalPodAutoscaler{}, nil
	case "policy/v1/PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, nil
	case "networking.k8s.io/v1/Ingress":
		return &networkingv1.Ingress{}, nil
	case "batch/v1/Job":
		return &batchv1.Job{}, nil
	case "monitoring.coreos.com/v1/ServiceMonitor":
		return &ServiceMonitor{}, nil
	}
	return nil, fmt.Errorf("no Go type for %s %s: add it to newObject", apiVersion, kind)
}

var docSep = regexp.MustCompile(`(?m)^---\s*$`)

func decodeAll(t *testing.T, files map[string]string) *manifests {
	t.Helper()
	m := &manifests{objs: map[string]any{}}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		body := files[name]
		if strings.HasSuffix(name, "NOTES.txt") {
			m.notes = body
			continue
		}
		for _, doc := range docSep.Split(body, -1) {
			if strings.TrimSpace(doc) == "" {
				continue
			}
			var head struct {
				APIVersion string `json:"apiVersion"`
				Kind       string `json:"kind"`
				Metadata   struct {
					Name      string `json:"name"`
					Namespace string `json:"namespace"`
				} `json:"metadata"`
			}
			if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
				t.Fatalf("%s: not YAML: %v\n%s", name, err, doc)
			}
			obj, err := newObject(head.APIVersion, head.Kind)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			// Strict: an unknown or misspelt field, or a duplicate key, fails.
			if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
				t.Fatalf("%s: %s %s does not decode strictly: %v\n%s", name, head.Kind, head.Metadata.Name, err, doc)
			}
			if head.Metadata.Name == "" {
				t.Errorf("%s: %s without a name", name, head.Kind)
			}
			if head.Metadata.Namespace == "" {
				t.Errorf("%s: %s %s without a namespace", name, head.Kind, head.Metadata.Name)
			}
			key := head.Kind + "/" + head.Metadata.Name
			if _, dup := m.objs[key]; dup {
				t.Errorf("%s rendered twice", key)
			}
			m.objs[key] = obj
		}
	}
	return m
}

func render(t *testing.T, vals map[string]any) *manifests {
	t.Helper()
	files, err := renderErr(loadChart(t), vals)
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	return decodeAll(t, files)
}

func get[T any](t *testing.T, m *manifests, kind, name string) T {
	t.Helper()
	o, ok := m.objs[kind+"/"+name]
	if !ok {
		keys := make([]string, 0, len(m.objs))
		for k := range m.objs {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		t.Fatalf("%s/%s not rendered; have %v", kind, name, keys)
	}
	return o.(T)
}

func all[T any](m *manifests) []T {
	var out []T
	keys := make([]string, 0, len(m.objs))
	for k := range m.objs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if o, ok := m.objs[k].(T); ok {
			out = append(out, o)
		}
	}
	return out
}

func runLint(t *testing.T, vals map[string]any) {
	t.Helper()
	l := lint.AllWithKubeVersionAndSchemaValidation(".", vals, namespace, kubeVersion, false)
	for _, msg := range l.Messages {
		// helm lint --strict: warnings fail too; the only accepted info is
		// the icon recommendation.
		if msg.Severity > support.InfoSev || !strings.Contains(msg.Err.Error(), "icon is recommended") {
			t.Errorf("lint: %s", msg)
		}
	}
}

func env(c corev1.Container) map[string]corev1.EnvVar {
	out := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		out[e.Name] = e
	}
	return out
}

func container(t *testing.T, d *appsv1.Deployment) corev1.Container {
	t.Helper()
	if len(d.Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("%s: %d containers", d.Name, len(d.Spec.Template.Spec.Containers))
	}
	return d.Spec.Template.Spec.Containers[0]
}

func fullName(component string) string { return release + "-parley-" + component }

// checkWorkload asserts what every Deployment of the chart must have.
func checkWorkload(t *testing.T, m *manifests, d *appsv1.Deployment) {
	t.Helper()
	ps := d.Spec.Template.Spec
	c := container(t, d)
	name := d.Name

	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
		t.Errorf("%s: selector %v does not match its pod labels %v", name, d.Spec.Selector, d.Spec.Template.Labels)
	}
	// Security context.
	if psc := ps.SecurityContext; psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot ||
		psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: pod security context %+v: want runAsNonRoot and seccomp RuntimeDefault", name, psc)
	}
	sc := c.SecurityContext
	switch {
	case sc == nil:
		t.Fatalf("%s: no container security context", name)
	case sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot:
		t.Errorf("%s: runAsNonRoot not set", name)
	case sc.RunAsUser == nil || *sc.RunAsUser == 0:
		t.Errorf("%s: runAsUser %v", name, sc.RunAsUser)
	case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
		t.Errorf("%s: root filesystem writable", name)
	case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
		t.Errorf("%s: privilege escalation allowed", name)
	case sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0:
		t.Errorf("%s: capabilities %+v, want drop ALL", name, sc.Capabilities)
	case sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault:
		t.Errorf("%s: container seccomp %+v", name, sc.SeccompProfile)
	}
	if ps.AutomountServiceAccountToken == nil || *ps.AutomountServiceAccountToken {
		t.Errorf("%s: service account token mounted", name)
	}
	// Probes on the named http port, which exists and is what PARLEY_LISTEN binds.
	var port int32
	for _, p := range c.Ports {
		if p.Name == "http" {
			port = p.ContainerPort
		}
	}
	if port == 0 {
		t.Fatalf("%s: no http port", name)
	}
	if got := env(c)["PARLEY_LISTEN"].Value; got != fmt.Sprintf(":%d", port) {
		t.Errorf("%s: PARLEY_LISTEN %q, container port %d", name, got, port)
	}
	for probe, want := range map[string]struct {
		p    *corev1.Probe
		path string
	}{
		"readiness": {c.ReadinessProbe, "/readyz"},
		"liveness":  {c.LivenessProbe, "/healthz"},
		"startup":   {c.StartupProbe, "/healthz"},
	} {
		if want.p == nil || want.p.HTTPGet == nil {
			t.Errorf("%s: no %s HTTP probe", name, probe)
			continue
		}
		if want.p.HTTPGet.Path != want.path || want.p.HTTPGet.Port.String() != "http" {
			t.Errorf("%s: %s probe %s on %s, want %s on http", name, probe, want.p.HTTPGet.Path, want.p.HTTPGet.Port.String(), want.path)
		}
	}
	// Resources.
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("%s: resources %+v: want cpu and memory requests and a memory limit", name, c.Resources)
	}
	// Every mount has a volume; /tmp is writable.
	vols := map[string]corev1.Volume{}
	for _, v := range ps.Volumes {
		vols[v.Name] = v
	}
	hasTmp := false
	for _, vm := range c.VolumeMounts {
		if _, ok := vols[vm.Name]; !ok {
			t.Errorf("%s: mount %s has no volume", name, vm.Name)
		}
		if vm.MountPath == "/tmp" {
			hasTmp = true
		}
	}
	if !hasTmp {
		t.Errorf("%s: no writable /tmp", name)
	}
	// The image's binary for this component.
	comp := d.Labels["app.kubernetes.io/component"]
	if want := []string{"/usr/local/bin/" + comp}; !slices.Equal(c.Command, want) {
		t.Errorf("%s: command %q, want %q", name, c.Command, want)
	}
	// A Service selects the pods.
	svc := get[*corev1.Service](t, m, "Service", name)
	if !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(d.Spec.Template.Labels)) {
		t.Errorf("Service %s does not select %s's pods", svc.Name, name)
	}
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].TargetPort.String() != "http" {
		t.Errorf("Service %s ports %+v", svc.Name, svc.Spec.Ports)
	}
}

func durationEnv(t *testing.T, c corev1.Container, name string) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(env(c)[name].Value)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return d
}

// checkEdge asserts the drain, PDB and HPA contract of the edges.
func checkEdge(t *testing.T, m *manifests) *appsv1.Deployment {
	t.Helper()
	d := get[*appsv1.Deployment](t, m, "Deployment", fullName("edge"))
	c := container(t, d)
	drain := durationEnv(t, c, "PARLEY_DRAIN_TIMEOUT")
	var preStop time.Duration
	if c.Lifecycle != nil && c.Lifecycle.PreStop != nil {
		if c.Lifecycle.PreStop.Sleep == nil {
			t.Fatalf("preStop %+v: want the sleep action (the image has no shell)", c.Lifecycle.PreStop)
		}
		preStop = time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
	}
	gp := d.Spec.Template.Spec.TerminationGracePeriodSeconds
	if gp == nil {
		t.Fatal("edge: no terminationGracePeriodSeconds")
	}
	// The kubelet's grace period runs from the preStop hook's start: the
	// whole drain must fit after it, with room to spare.
	if grace := time.Duration(*gp) * time.Second; grace < preStop+drain+5*time.Second {
		t.Errorf("edge: grace period %v < preStop %v + drain %v + 5s margin", grace, preStop, drain)
	}
	if ru := d.Spec.Strategy.RollingUpdate; ru == nil || ru.MaxUnavailable == nil || ru.MaxUnavailable.IntValue() != 0 {
		t.Errorf("edge rolling update %+v: want maxUnavailable 0", d.Spec.Strategy.RollingUpdate)
	}
	pdb := get[*policyv1.PodDisruptionBudget](t, m, "PodDisruptionBudget", fullName("edge"))
	ps, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
	if err != nil || !ps.Matches(labels.Set(d.Spec.Template.Labels)) {
		t.Errorf("edge PDB selector %v does not match edge pods", pdb.Spec.Selector)
	}
	for _, other := range []string{"presence", "archiver"} {
		if ps.Matches(labels.Set(map[string]string{"app.kubernetes.io/name": "parley", "app.kubernetes.io/instance": release, "app.kubernetes.io/component": other})) {
			t.Errorf("edge PDB also selects %s pods", other)
		}
	}
	if pdb.Spec.MaxUnavailable == nil && pdb.Spec.MinAvailable == nil {
		t.Error("edge PDB has no budget")
	}
	if env(c)["PARLEY_INSECURE"].Value != "false" {
		t.Errorf("edge PARLEY_INSECURE %q", env(c)["PARLEY_INSECURE"].Value)
	}
	return d
}

func TestDefaultValues(t *testing.T) {
	runLint(t, nil)
	m := render(t, nil)
	deps := all[*appsv1.Deployment](m)
	if len(deps) != 3 {
		t.Fatalf("%d Deployments, want edge, presence, archiver", len(deps))
	}
	for _, d := range deps {
		checkWorkload(t, m, d)
	}
	d := checkEdge(t, m)
	c := container(t, d)
	if d.Spec.Replicas != nil {
		t.Errorf("edge replicas %d set while the HPA owns them", *d.Spec.Replicas)
	}
	hpa := get[*autoscalingv2.HorizontalPodAutoscaler](t, m, "HorizontalPodAutoscaler", fullName("edge"))
	if hpa.Spec.ScaleTargetRef.Name != d.Name || hpa.Spec.ScaleTargetRef.Kind != "Deployment" {
		t.Errorf("HPA targets %+v", hpa.Spec.ScaleTargetRef)
	}
	// Drain defaults: 20 s drain, 5 s preStop, grace 35 s.
	if got := durationEnv(t, c, "PARLEY_DRAIN_TIMEOUT"); got != 20*time.Second {
		t.Errorf("default drain %v, want the edge's 20s", got)
	}
	if gp := *d.Spec.Template.Spec.TerminationGracePeriodSeconds; gp != 35 {
		t.Errorf("default grace period %d, want 35", gp)
	}
	for _, e := range []string{"PARLEY_STREAM_REPLICAS"} {
		if env(c)[e].Value != "3" {
			t.Errorf("%s = %q, want 3", e, env(c)[e].Value)
		}
	}
	if env(c)["PARLEY_NATS"].Value != "nats://nats:4222" {
		t.Errorf("PARLEY_NATS %q", env(c)["PARLEY_NATS"].Value)
	}
	// Default archiver: SQLite on a kept PVC, one replica, Recreate.
	a := get[*appsv1.Deployment](t, m, "Deployment", fullName("archiver"))
	if *a.Spec.Replicas != 1 || a.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
		t.Errorf("sqlite archiver: replicas %d strategy %s", *a.Spec.Replicas, a.Spec.Strategy.Type)
	}
	pvc := get[*corev1.PersistentVolumeClaim](t, m, "PersistentVolumeClaim", fullName("archiver"))
	if pvc.Annotations["helm.sh/resource-policy"] != "keep" {
		t.Error("archive PVC would be deleted with the release")
	}
	if !mountsClaim(a, pvc.Name, "/data") {
		t.Error("archiver does not mount its PVC at /data")
	}
	// Without a JWT key the notes warn that the edges will not start.
	if !strings.Contains(m.notes, "no JWT key is configured") {
		t.Errorf("NOTES do not warn about the missing JWT key:\n%s", m.notes)
	}
	// Optional objects stay off by default.
	for _, k := range []string{"Ingress", "ServiceMonitor", "Job", "ConfigMap", "Secret"} {
		for key := range m.objs {
			if strings.HasPrefix(key, k+"/") {
				t.Errorf("%s rendered by default", key)
			}
		}
	}
	// Pods carry the plain scrape annotations.
	for _, d := range deps {
		a := d.Spec.Template.Annotations
		if a["prometheus.io/scrape"] != "true" || a["prometheus.io/path"] != "/metrics" || a["prometheus.io/port"] != "8080" {
			t.Errorf("%s: scrape annotations %v", d.Name, a)
		}
	}
}

func mountsClaim(d *appsv1.Deployment, claim, path string) bool {
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.PersistentVolumeClaim != nil && v.PersistentVolumeClaim.ClaimName == claim {
			for _, vm := range d.Spec.Template.Spec.Containers[0].VolumeMounts {
				if vm.Name == v.Name && vm.MountPath == path {
					return true
				}
			}
		}
	}
	return false
}

// secretFile finds the Secret and key mounted as the file path in d.
func secretFile(t *testing.T, d *appsv1.Deployment, path string) (secret, key string) {
	t.Helper()
	c := d.Spec.Template.Spec.Containers[0]
	for _, vm := range c.VolumeMounts {
		rel, err := filepath.Rel(vm.MountPath, path)
		if err != nil || strings.HasPrefix(rel, "..") {
			continue
		}
		for _, v := range d.Spec.Template.Spec.Volumes {
			if v.Name != vm.Name || v.Secret == nil {
				continue
			}
			if len(v.Secret.Items) == 0 {
				return v.Secret.SecretName, rel
			}
			for _, it := range v.Secret.Items {
				if it.Path == rel {
					return v.Secret.SecretName, it.Key
				}
			}
		}
	}
	t.Fatalf("%s: no Secret is mounted at %s", d.Name, path)
	return "", ""
}

func secretRef(t *testing.T, c corev1.Container, name string) (secret, key string) {
	t.Helper()
	e, ok := env(c)[name]
	if !ok || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
		t.Fatalf("%s is not read from a Secret: %+v", name, e)
	}
	if e.Value != "" {
		t.Errorf("%s has a plain value too", name)
	}
	return e.ValueFrom.SecretKeyRef.Name, e.ValueFrom.SecretKeyRef.Key
}

func TestProductionValues(t *testing.T) {
	vals := valuesFile(t, "ci/production-values.yaml")
	runLint(t, vals)
	m := render(t, vals)
	for _, d := range all[*appsv1.Deployment](m) {
		checkWorkload(t, m, d)
	}
	edge := checkEdge(t, m)
	c := container(t, edge)

	// JWT from the existing Secret, as a file; no secret in plain env.
	if p := env(c)["PARLEY_JWT_PUBLIC_KEY"].Value; p == "" {
		t.Fatal("no PARLEY_JWT_PUBLIC_KEY")
	} else if s, k := secretFile(t, edge, p); s != "parley-jwt" || k != "jwt.pem" {
		t.Errorf("JWT public key from %s/%s, want parley-jwt/jwt.pem", s, k)
	}
	if _, ok := env(c)["PARLEY_JWT_SECRET"]; ok {
		t.Error("JWT secret in plain env")
	}
	// NATS creds: the edge's own, the others the shared one.
	for comp, want := range map[string]string{"edge": "parley-nats-edge", "presence": "parley-nats", "archiver": "parley-nats"} {
		d := get[*appsv1.Deployment](t, m, "Deployment", fullName(comp))
		p := env(container(t, d))["PARLEY_NATS_CREDS"].Value
		if s, k := secretFile(t, d, p); s != want || k != "nats.creds" {
			t.Errorf("%s: NATS creds from %s/%s, want %s/nats.creds", comp, s, k, want)
		}
		if ca := env(container(t, d))["PARLEY_NATS_TLS_CA"].Value; ca == "" {
			t.Errorf("%s: no NATS TLS CA", comp)
		} else if s, k := secretFile(t, d, ca); s != "nats-ca" || k != "ca.crt" {
			t.Errorf("%s: NATS CA from %s/%s", comp, s, k)
		}
	}
	// Archiver: PostgreSQL DSN from the Secret, scaled, rolling.
	a := get[*appsv1.Deployment](t, m, "Deployment", fullName("archiver"))
	if s, k := secretRef(t, container(t, a), "PARLEY_POSTGRES_DSN"); s != "parley-archive-db" || k != "dsn" {
		t.Errorf("DSN from %s/%s", s, k)
	}
	if *a.Spec.Replicas != 2 || a.Spec.Strategy.Type != appsv1.RollingUpdateDeploymentStrategyType {
		t.Errorf("postgres archiver: replicas %d strategy %s", *a.Spec.Replicas, a.Spec.Strategy.Type)
	}
	if _, ok := m.objs["PersistentVolumeClaim/"+fullName("archiver")]; ok {
		t.Error("PVC rendered for a postgres archiver")
	}
	// Ingress exposes /ws only, to the edge Service.
	ing := get[*networkingv1.Ingress](t, m, "Ingress", fullName("edge"))
	for _, r := range ing.Spec.Rules {
		for _, p := range r.HTTP.Paths {
			if p.Path != "/ws" || p.Backend.Service.Name != fullName("edge") {
				t.Errorf("ingress path %s → %s", p.Path, p.Backend.Service.Name)
			}
		}
	}
	// ServiceMonitor selects all three Services on their http port.
	sm := get[*ServiceMonitor](t, m, "ServiceMonitor", release+"-parley")
	smSel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
	if err != nil {
		t.Fatal(err)
	}
	for _, comp := range []string{"edge", "presence", "archiver"} {
		svc := get[*corev1.Service](t, m, "Service", fullName(comp))
		if !smSel.Matches(labels.Set(svc.Labels)) {
			t.Errorf("ServiceMonitor misses the %s Service", comp)
		}
	}
	if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != "http" || sm.Spec.Endpoints[0].Path != "/metrics" {
		t.Errorf("ServiceMonitor endpoints %+v", sm.Spec.Endpoints)
	}
	if sm.Labels["release"] != "kube-prometheus-stack" {
		t.Errorf("ServiceMonitor labels %v", sm.Labels)
	}
	// Dashboard ConfigMap for the Grafana sidecar, holding valid JSON.
	cm := get[*corev1.ConfigMap](t, m, "ConfigMap", release+"-parley-dashboard")
	if cm.Labels["grafana_dashboard"] != "1" {
		t.Errorf("dashboard labels %v", cm.Labels)
	}
	var dash map[string]any
	if err := json.Unmarshal([]byte(cm.Data["parley.json"]), &dash); err != nil || dash["title"] == nil {
		t.Errorf("dashboard ConfigMap JSON: %v", err)
	}
	// Provision hook Job runs `edge provision` with the stream settings.
	job := get[*batchv1.Job](t, m, "Job", fullName("provision"))
	if job.Annotations["helm.sh/hook"] != "pre-install,pre-upgrade" {
		t.Errorf("provision hook %q", job.Annotations["helm.sh/hook"])
	}
	jc := job.Spec.Template.Spec.Containers[0]
	if !slices.Equal(jc.Command, []string{"/usr/local/bin/edge", "provision"}) {
		t.Errorf("provision command %q", jc.Command)
	}
	if env(jc)["PARLEY_STREAM_REPLICAS"].Value != "3" || env(jc)["PARLEY_NATS"].Value != env(c)["PARLEY_NATS"].Value {
		t.Error("provision Job and edge disagree on NATS or the stream")
	}
	for k, v := range env(c) {
		if strings.HasPrefix(k, "PARLEY_STREAM_") && env(jc)[k].Value != v.Value {
			t.Errorf("provision %s=%q, edge %q", k, env(jc)[k].Value, v.Value)
		}
	}
	if s, _ := secretFile(t, &appsv1.Deployment{Spec: appsv1.DeploymentSpec{Template: job.Spec.Template}}, env(jc)["PARLEY_NATS_CREDS"].Value); s != "parley-nats-edge" {
		t.Errorf("provision job NATS creds from %s", s)
	}
	jsc := jc.SecurityContext
	if jsc == nil || !*jsc.ReadOnlyRootFilesystem || *jsc.AllowPrivilegeEscalation {
		t.Error("provision Job security context")
	}
	if strings.Contains(m.notes, "WARNING") {
		t.Errorf("production notes warn:\n%s", m.notes)
	}
	// The image is pinned by digest.
	if !strings.Contains(c.Image, "@sha256:") {
		t.Errorf("image %s not pinned", c.Image)
	}
}

// Authentication variants the production file does not use: inline JWT
// secret (chart-created Secret) with a JWKS, NATS user/password, token,
// nkey, mutual TLS; TLS on the edge pods.
func authVariantValues() map[string]any {
	return map[string]any{
		"jwt": map[string]any{"secret": "s3cret-s3cret-s3cret-s3cret-s3cret", "issuer": "https://id.example.com", "audience": "parley",
			"jwksUrl": "https://id.example.com/.well-known/jwks.json"},
		"nats": map[string]any{
			"user":     "edge",
			"password": map[string]any{"existingSecret": "nats-user", "key": "password"},
			"token":    map[string]any{"existingSecret": "nats-token", "key": "token"},
			"nkey":     map[string]any{"existingSecret": "nats-nkey", "key": "seed"},
			"creds":    map[string]any{"existingSecret": "nats-creds", "key": "nats.creds"},
			"tls":      map[string]any{"existingSecret": "nats-tls", "caKey": "ca.crt", "certKey": "tls.crt", "keyKey": "tls.key"},
		},
		"edge": map[string]any{
			"allowedOrigins":      []any{"https://a.example.com", "https://b.example.com"},
			"allowedHosts":        []any{"chat.internal"},
			"reusePort":           true,
			"autoscaling":         map[string]any{"enabled": false},
			"preStopSleepSeconds": 0,
			"tls":                 map[string]any{"existingSecret": "edge-tls"},
		},
	}
}

func TestAuthVariants(t *testing.T) {
	vals := authVariantValues()
	runLint(t, vals)
	m := render(t, vals)
	edge := checkEdge(t, m)
	c := container(t, edge)
	sec := get[*corev1.Secret](t, m, "Secret", release+"-parley-jwt")
	if s, k := secretFile(t, edge, env(c)["PARLEY_JWT_SECRET_FILE"].Value); s != sec.Name || string(sec.Data[k]) != "s3cret-s3cret-s3cret-s3cret-s3cret" {
		t.Errorf("JWT secret file from %s/%s (%q)", s, k, sec.Data[k])
	}
	if edge.Spec.Template.Annotations["checksum/jwt"] == "" {
		t.Error("no checksum/jwt: a new inline secret would not roll the edges")
	}
	if s, k := secretRef(t, c, "PARLEY_NATS_PASSWORD"); s != "nats-user" || k != "password" {
		t.Errorf("password from %s/%s", s, k)
	}
	if s, k := secretRef(t, c, "PARLEY_NATS_TOKEN"); s != "nats-token" || k != "token" {
		t.Errorf("token from %s/%s", s, k)
	}
	for e, want := range map[string][2]string{
		"PARLEY_NATS_NKEY":     {"nats-nkey", "seed"},
		"PARLEY_NATS_TLS_CERT": {"nats-tls", "tls.crt"},
		"PARLEY_NATS_TLS_KEY":  {"nats-tls", "tls.key"},
	} {
		if s, k := secretFile(t, edge, env(c)[e].Value); s != want[0] || k != want[1] {
			t.Errorf("%s from %s/%s, want %v", e, s, k, want)
		}
	}
	if got := env(c)["PARLEY_ALLOWED_ORIGINS"].Value; got != "https://a.example.com,https://b.example.com" {
		t.Errorf("PARLEY_ALLOWED_ORIGINS %q", got)
	}
	if c.Lifecycle != nil {
		t.Errorf("preStopSleepSeconds 0 still renders %+v", c.Lifecycle)
	}
	if edge.Spec.Replicas == nil || *edge.Spec.Replicas != 2 {
		t.Error("without the HPA the edge Deployment sets replicas")
	}
	if _, ok := m.objs["HorizontalPodAutoscaler/"+fullName("edge")]; ok {
		t.Error("HPA rendered while disabled")
	}
}

// values.schema.json refuses wrong types, unknown keys and bad enums before
// anything renders.
func TestSchemaRejectsBadValues(t *testing.T) {
	c := loadChart(t)
	if _, err := renderValues(c, nil); err != nil {
		t.Fatalf("defaults fail the schema: %v", err)
	}
	for _, tc := range []struct {
		name string
		vals string
		want string // part of the error
	}{
		{"string replicas", "edge: {replicaCount: three}", "replicaCount"},
		{"string stream replicas", "stream: {replicas: \"3\"}", "replicas"},
		{"stream replicas 6", "stream: {replicas: 6}", "replicas"},
		{"unknown key", "edge: {replicas: 3}", "replicas"},
		{"unknown top-level key", "natsUrl: nats://x:4222", "natsUrl"},
		{"bad duration", "edge: {pingInterval: 25 seconds}", "pingInterval"},
		{"bad log level", "log: {level: loud}", "level"},
		{"bad store", "archiver: {store: {driver: mysql}}", "driver"},
		{"negative drain", "edge: {drainTimeoutSeconds: -1}", "drainTimeoutSeconds"},
		{"boolean as string", "edge: {insecure: \"false\"}", "insecure"},
		{"ingress path type", "edge: {ingress: {hosts: [{host: a, paths: [{path: /ws, pathType: Any}]}]}}", "pathType"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vals, err := chartutil.ReadValues([]byte(tc.vals))
			if err != nil {
				t.Fatal(err)
			}
			_, err = renderValues(c, vals)
			if err == nil {
				t.Fatalf("schema accepted %s", tc.vals)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error does not name %q: %v", tc.want, err)
			}
		})
	}
}

// Values the schema cannot judge alone fail the render with a clear message.
func TestTemplateRefusesUnsafeValues(t *testing.T) {
	c := loadChart(t)
	for _, tc := range []struct {
		name, vals, want string
	}{
		{"grace shorter than drain", "edge: {terminationGracePeriodSeconds: 20, drainTimeoutSeconds: 20, preStopSleepSeconds: 5}", "mid-drain"},
		{"sqlite with two replicas", "archiver: {replicaCount: 2}", "replicaCount must be 1"},
		{"sqlite without a PVC", "archiver: {persistence: {enabled: false}}", "needs archiver.persistence.enabled"},
		{"postgres without a DSN", "archiver: {store: {driver: postgres}}", "existingSecret"},
		{"jwt secret without key", "jwt: {existingSecret: jwt}", "jwt.secretKey"},
		{"jwt secret too short", "jwt: {secret: short}", "minLength"},
		{"memory limit not a size", "edge: {memoryLimit: lots}", "memoryLimit"},
		{"jwt inline and existing", "jwt: {existingSecret: jwt, secretKey: k, secret: s3cret-s3cret-s3cret-s3cret-s3cret}", "not both"},
		{"nats user without password", "nats: {user: edge}", "password"},
		{"half mutual TLS", "nats: {tls: {existingSecret: t, certKey: tls.crt}}", "both"},
		{"pdb with both budgets", "edge: {pdb: {minAvailable: 1, maxUnavailable: 1}}", "not both"},
		{"archive ack pending below batch × replicas", "archiver: {replicaCount: 3, batch: 5000, store: {driver: postgres, postgres: {existingSecret: db}}, persistence: {enabled: false}}", "archiver.maxAckPending"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vals, err := chartutil.ReadValues([]byte(tc.vals))
			if err != nil {
				t.Fatal(err)
			}
			_, err = renderErr(c, vals)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("render error %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

// flagsOf lists the flags a command registers, read from its source: calls
// fs.String/Int/…/Var(&x, "name", …), and Register(fs) on a field of type
// config.NATS, config.Log or gcpolicy.Flags (the flags every binary shares).
func flagsOf(t *testing.T, dir string) (names []string, ok bool) {
	t.Helper()
	fset := token.NewFileSet()
	paths, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		t.Fatalf("%s: %v", dir, err)
	}
	var files []*ast.File
	for _, p := range paths {
		if strings.HasSuffix(p, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, p, nil, 0)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		files = append(files, f)
	}
	if len(files) == 0 {
		return nil, false
	}
	kinds := map[string]int{ // method → index of the name argument
		"String": 0, "Bool": 0, "Int": 0, "Int64": 0, "Uint": 0, "Uint64": 0, "Float64": 0, "Duration": 0, "Func": 0, "BoolFunc": 0,
		"StringVar": 1, "BoolVar": 1, "IntVar": 1, "Int64Var": 1, "UintVar": 1, "Uint64Var": 1, "Float64Var": 1, "DurationVar": 1,
		"Var": 1, "TextVar": 1,
	}
	// The types of the command's struct fields (nats: config.NATS), to
	// know whose flags o.nats.Register(fs) adds.
	fieldTypes := map[string]string{}
	for _, f := range files {
		ast.Inspect(f, func(n ast.Node) bool {
			if st, ok := n.(*ast.StructType); ok {
				for _, fl := range st.Fields.List {
					if sel, ok := fl.Type.(*ast.SelectorExpr); ok {
						if pkg, ok := sel.X.(*ast.Ident); ok {
							for _, name := range fl.Names {
								fieldTypes[name.Name] = pkg.Name + "." + sel.Sel.Name
							}
						}
					}
				}
			}
			return true
		})
	}
	shared := map[string]func(*flag.FlagSet){
		"config.NATS":    func(fs *flag.FlagSet) { (&config.NATS{}).Register(fs) },
		"config.Log":     func(fs *flag.FlagSet) { (&config.Log{}).Register(fs) },
		"gcpolicy.Flags": func(fs *flag.FlagSet) { (&gcpolicy.Flags{}).Register(fs) },
	}
	seen := map[string]bool{}
	for _, f := range files {
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if sel.Sel.Name == "Register" && len(call.Args) == 1 {
				recv, _ := sel.X.(*ast.SelectorExpr) // o.nats
				var typ string
				if recv != nil {
					typ = fieldTypes[recv.Sel.Name]
				}
				register, ok := shared[typ]
				if !ok {
					t.Errorf("%s: Register(fs) on a %q: teach flagsOf which flags it adds", dir, typ)
					return true
				}
				fs := flag.NewFlagSet("shared", flag.ContinueOnError)
				register(fs)
				fs.VisitAll(func(f *flag.Flag) { seen[f.Name] = true })
				return true
			}
			i, ok := kinds[sel.Sel.Name]
			if !ok || len(call.Args) <= i+1 {
				return true
			}
			if lit, ok := call.Args[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
				if name, err := strconv.Unquote(lit.Value); err == nil {
					seen[name] = true
				}
			}
			return true
		})
	}
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	return names, true
}

// notInChart are flags the chart deliberately never sets, with the reason.
var notInChart = map[string]map[string]string{
	"edge": {
		"nats-listen": "embedded NATS (dev mode); the chart always gives --nats",
		"data":        "embedded NATS data directory (dev mode)",
		"jwt-secret":  "the chart passes the HS256 secret as a file (--jwt-secret-file), never in the environment",
	},
	"presence": {},
	"archiver": {},
}

// TestEveryFlagIsReachable: every flag of every binary is set by some
// rendering of the chart (a typed value), so values.yaml reaches all of them.
func TestEveryFlagIsReachable(t *testing.T) {
	c := loadChart(t)
	envs := map[string]map[string]bool{}
	variants := []map[string]any{nil, valuesFile(t, "ci/production-values.yaml"), authVariantValues()}
	for _, vals := range variants {
		files, err := renderErr(c, vals)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range all[*appsv1.Deployment](decodeAll(t, files)) {
			comp := d.Labels["app.kubernetes.io/component"]
			if envs[comp] == nil {
				envs[comp] = map[string]bool{}
			}
			for _, e := range d.Spec.Template.Spec.Containers[0].Env {
				envs[comp][e.Name] = true
			}
		}
	}
	for _, comp := range []string{"edge", "presence", "archiver"} {
		flags, ok := flagsOf(t, filepath.Join("..", "..", "cmd", comp))
		if !ok {
			t.Errorf("cmd/%s does not exist yet: its flags are unchecked", comp)
			continue
		}
		for _, f := range flags {
			if _, skip := notInChart[comp][f]; skip {
				continue
			}
			if !envs[comp][config.EnvName(f)] {
				t.Errorf("%s flag --%s (%s) is not reachable from values.yaml: add a value, wire it in the %s Deployment and document it in README.md (or list it in notInChart with the reason)", comp, f, config.EnvName(f), comp)
			}
		}
		for f := range notInChart[comp] {
			if !slices.Contains(flags, f) {
				t.Errorf("notInChart[%s] lists --%s, which the binary no longer has", comp, f)
			}
		}
	}
}

var (
	metricDecl = regexp.MustCompile(`Name:\s*"(parley_[a-z0-9_]+)"`)
	metricUse  = regexp.MustCompile(`parley_[a-z0-9_]+`)
)

// exportedMetrics reads the parley_* metric names declared in the code.
func exportedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	root := filepath.Join("..", "..")
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "helm") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, m := range metricDecl.FindAllSubmatch(b, -1) {
			out[string(m[1])] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestDashboard: the Grafana dashboard is valid JSON, queries only metrics
// the code exports, and shows every one of them.
func TestDashboard(t *testing.T) {
	b, err := os.ReadFile("dashboards/parley.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string `json:"title"`
		UID    string `json:"uid"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	if dash.Title == "" || dash.UID == "" || len(dash.Panels) == 0 {
		t.Fatalf("dashboard lacks title, uid or panels")
	}
	exported := exportedMetrics(t)
	if len(exported) < 10 {
		t.Fatalf("found only %d parley_* metrics in the code: the scan is broken", len(exported))
	}
	used := map[string]bool{}
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, m := range metricUse.FindAllString(tg.Expr, -1) {
				base := m
				for _, suf := range []string{"_bucket", "_sum", "_count"} {
					if !exported[base] {
						base = strings.TrimSuffix(base, suf)
					}
				}
				if !exported[base] {
					t.Errorf("panel %q queries %s, which no component exports", p.Title, m)
				}
				used[base] = true
			}
		}
	}
	var missing []string
	for m := range exported {
		if !used[m] {
			missing = append(missing, m)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("metrics not on the dashboard (add a panel in helm/parley/dashboards/parley.json): %v", missing)
	}
}

// TestReadmeCoversEveryValue: every leaf of values.yaml has a row in the
// README's values table (a row for an object covers its children).
func TestReadmeCoversEveryValue(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^\\| `([A-Za-z0-9_.]+)` \\|").FindAllStringSubmatch(string(readme), -1) {
		rows[m[1]] = true
	}
	if len(rows) < 50 {
		t.Fatalf("README values table has %d rows: not found?", len(rows))
	}
	vals := valuesFile(t, "values.yaml")
	var walk func(prefix string, v map[string]any)
	walk = func(prefix string, v map[string]any) {
		for k, x := range v {
			p := k
			if prefix != "" {
				p = prefix + "." + k
			}
			if rows[p] {
				continue
			}
			if m, ok := x.(map[string]any); ok && len(m) > 0 {
				walk(p, m)
				continue
			}
			t.Errorf("value %s is not in the README values table", p)
		}
	}
	walk("", vals)
	// And no row documents a value that does not exist.
	for r := range rows {
		cur, found := any(map[string]any(vals)), true
		for _, part := range strings.Split(r, ".") {
			m, ok := cur.(map[string]any)
			if !ok {
				found = false
				break
			}
			if cur, ok = m[part]; !ok {
				found = false
				break
			}
		}
		if !found {
			t.Errorf("README documents %s, which values.yaml does not have", r)
		}
	}
}
