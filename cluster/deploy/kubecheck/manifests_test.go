package kubecheck

import (
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

const (
	stateDir       = "/var/lib/retail-stream"
	propertiesPath = "/etc/retail-stream/client.properties"
)

// rendered decodes the manifests of `helm template` named by $RENDERED.
func rendered(t *testing.T) *Objects {
	t.Helper()
	path := os.Getenv("RENDERED")
	if path == "" {
		t.Skip("RENDERED is not set: run cluster/deploy/check, which renders the chart")
	}
	text, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	objects, err := DecodeAll(string(text))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return objects
}

func expectedReplicas(t *testing.T) int32 {
	t.Helper()
	text := os.Getenv("EXPECT_REPLICAS")
	if text == "" {
		return 2
	}
	n, err := strconv.ParseInt(text, 10, 32)
	if err != nil {
		t.Fatalf("EXPECT_REPLICAS=%q: %v", text, err)
	}
	return int32(n)
}

func envVar(c *corev1.Container, name string) *corev1.EnvVar {
	for i := range c.Env {
		if c.Env[i].Name == name {
			return &c.Env[i]
		}
	}
	return nil
}

func envValue(t *testing.T, c *corev1.Container, name string) string {
	t.Helper()
	v := envVar(c, name)
	if v == nil {
		t.Fatalf("container %s has no env %s", c.Name, name)
	}
	if v.ValueFrom != nil {
		t.Fatalf("env %s should be a plain value, is %+v", name, v.ValueFrom)
	}
	return v.Value
}

func fieldRef(t *testing.T, c *corev1.Container, name, path string) {
	t.Helper()
	v := envVar(c, name)
	if v == nil || v.ValueFrom == nil || v.ValueFrom.FieldRef == nil || v.ValueFrom.FieldRef.FieldPath != path {
		t.Errorf("env %s should come from the downward API fieldRef %s, is %+v", name, path, v)
	}
}

func port(t *testing.T, c *corev1.Container, name string) corev1.ContainerPort {
	t.Helper()
	for _, p := range c.Ports {
		if p.Name == name {
			return p
		}
	}
	t.Fatalf("container %s has no port named %s", c.Name, name)
	return corev1.ContainerPort{}
}

func httpGet(t *testing.T, what string, p *corev1.Probe, path string) {
	t.Helper()
	if p == nil || p.HTTPGet == nil {
		t.Errorf("%s probe should be an httpGet on %s, is %+v", what, path, p)
		return
	}
	if p.HTTPGet.Path != path || p.HTTPGet.Port.String() != "http" {
		t.Errorf("%s probe: GET %s on port %s, want %s on port http", what, p.HTTPGet.Path, p.HTTPGet.Port.String(), path)
	}
}

func selects(t *testing.T, what string, selector *metav1.LabelSelector, podLabels map[string]string) {
	t.Helper()
	s, err := metav1.LabelSelectorAsSelector(selector)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if s.Empty() || !s.Matches(labels.Set(podLabels)) {
		t.Errorf("%s selector %v does not select the pods (labels %v)", what, s, podLabels)
	}
}

func TestRenderedManifests(t *testing.T) {
	objects := rendered(t)
	if len(objects.StatefulSets) != 1 {
		t.Fatalf("want one StatefulSet, got %d", len(objects.StatefulSets))
	}
	sts := objects.StatefulSets[0]
	pod := &sts.Spec.Template
	want := expectedReplicas(t)

	t.Run("labels", func(t *testing.T) {
		for _, meta := range allMeta(objects) {
			for _, key := range []string{"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version", "app.kubernetes.io/managed-by"} {
				if meta.Labels[key] == "" {
					t.Errorf("%s has no label %s", meta.Name, key)
				}
			}
		}
	})

	t.Run("statefulset", func(t *testing.T) {
		if sts.Spec.PodManagementPolicy != appsv1.ParallelPodManagement {
			t.Errorf("podManagementPolicy %q, want Parallel", sts.Spec.PodManagementPolicy)
		}
		if r := sts.Spec.Replicas; r == nil {
			t.Errorf("no replicas, want %d", want)
		} else if *r != want {
			t.Errorf("replicas %d, want %d", *r, want)
		}
		selects(t, "StatefulSet", sts.Spec.Selector, pod.Labels)
		if pod.Spec.RestartPolicy != "" && pod.Spec.RestartPolicy != corev1.RestartPolicyAlways {
			t.Errorf("restartPolicy %q: a failed process must be restarted", pod.Spec.RestartPolicy)
		}
	})

	var headless *corev1.Service
	for _, s := range objects.Services {
		if s.Name == sts.Spec.ServiceName {
			headless = s
		}
	}
	t.Run("headless service", func(t *testing.T) {
		if headless == nil {
			t.Fatalf("serviceName %q names no rendered Service", sts.Spec.ServiceName)
		}
		if headless.Spec.ClusterIP != corev1.ClusterIPNone {
			t.Errorf("clusterIP %q, want None", headless.Spec.ClusterIP)
		}
		if !headless.Spec.PublishNotReadyAddresses {
			t.Error("publishNotReadyAddresses must be true: a process binds its own DNS name before it is ready")
		}
		selects(t, "headless Service", &metav1.LabelSelector{MatchLabels: headless.Spec.Selector}, pod.Labels)
		protocols := map[corev1.Protocol]int32{}
		for _, p := range headless.Spec.Ports {
			protocols[p.Protocol] = p.Port
		}
		if protocols[corev1.ProtocolTCP] != 2101 || protocols[corev1.ProtocolUDP] != 2101 {
			t.Errorf("ports %+v, want 2101/TCP (timely) and 2101/UDP (heartbeats)", headless.Spec.Ports)
		}
	})

	if len(pod.Spec.Containers) != 1 {
		t.Fatalf("want one container, got %d", len(pod.Spec.Containers))
	}
	c := &pod.Spec.Containers[0]

	t.Run("entry point environment", func(t *testing.T) {
		fieldRef(t, c, "POD_NAME", "metadata.name")
		fieldRef(t, c, "POD_NAMESPACE", "metadata.namespace")
		if got := envValue(t, c, "RS_REPLICAS"); got != strconv.Itoa(int(want)) {
			t.Errorf("RS_REPLICAS %q, want %d (= replicas)", got, want)
		}
		if got := envValue(t, c, "RS_SERVICE"); got != sts.Spec.ServiceName {
			t.Errorf("RS_SERVICE %q, want the serviceName %q", got, sts.Spec.ServiceName)
		}
		if got := envValue(t, c, "RS_STATEFULSET"); got != sts.Name {
			t.Errorf("RS_STATEFULSET %q, want %q", got, sts.Name)
		}
		if got := envValue(t, c, "RS_PORT"); got != "2101" {
			t.Errorf("RS_PORT %q, want 2101", got)
		}
		if got := envValue(t, c, "RS_HTTP"); got != "0.0.0.0:8080" {
			t.Errorf("RS_HTTP %q, want 0.0.0.0:8080", got)
		}
		if got := envValue(t, c, "RS_WORKERS"); got == "" {
			t.Error("RS_WORKERS is empty")
		}
		if got := envValue(t, c, "RS_STATE_DIR"); got != stateDir {
			t.Errorf("RS_STATE_DIR %q, want %s", got, stateDir)
		}
		for _, a := range c.Args {
			if slices.Contains([]string{"-n", "-p", "-h", "-w", "--http"}, a) {
				t.Errorf("args %v repeat %s, which the entry point sets", c.Args, a)
			}
		}
		if len(c.Command) != 0 {
			t.Errorf("command %v would replace the entry point", c.Command)
		}
	})

	t.Run("ports and probes", func(t *testing.T) {
		for _, want := range []corev1.ContainerPort{
			{Name: "timely", ContainerPort: 2101, Protocol: corev1.ProtocolTCP},
			{Name: "heartbeat", ContainerPort: 2101, Protocol: corev1.ProtocolUDP},
			{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP},
		} {
			if got := port(t, c, want.Name); got != want {
				t.Errorf("port %+v, want %+v", got, want)
			}
		}
		httpGet(t, "liveness", c.LivenessProbe, "/healthz")
		httpGet(t, "readiness", c.ReadinessProbe, "/readyz")
		if c.StartupProbe != nil {
			httpGet(t, "startup", c.StartupProbe, "/healthz")
		}
		if p := c.LivenessProbe; p != nil && (p.PeriodSeconds != 10 || p.FailureThreshold != 3) {
			t.Errorf("liveness period %ds x %d, want 10s x 3", p.PeriodSeconds, p.FailureThreshold)
		}
		if g := pod.Spec.TerminationGracePeriodSeconds; g == nil || *g != 30 {
			t.Errorf("terminationGracePeriodSeconds unset or not 30, want 30")
		}
	})

	t.Run("scrape annotations", func(t *testing.T) {
		a := pod.Annotations
		if a["prometheus.io/scrape"] != "true" || a["prometheus.io/port"] != "8080" || a["prometheus.io/path"] != "/metrics" {
			t.Errorf("pod annotations %v, want prometheus.io/scrape true, port 8080, path /metrics", a)
		}
	})

	t.Run("security", func(t *testing.T) {
		ps := pod.Spec.SecurityContext
		if ps == nil || ps.RunAsNonRoot == nil || !*ps.RunAsNonRoot || ps.RunAsUser == nil || *ps.RunAsUser != 10001 {
			t.Errorf("pod securityContext %+v, want runAsNonRoot and runAsUser 10001", ps)
		}
		cs := c.SecurityContext
		if cs == nil || cs.RunAsNonRoot == nil || !*cs.RunAsNonRoot ||
			cs.ReadOnlyRootFilesystem == nil || !*cs.ReadOnlyRootFilesystem ||
			cs.AllowPrivilegeEscalation == nil || *cs.AllowPrivilegeEscalation ||
			cs.Capabilities == nil || !slices.Equal(cs.Capabilities.Drop, []corev1.Capability{"ALL"}) {
			t.Errorf("container securityContext %+v, want runAsNonRoot, readOnlyRootFilesystem, no privilege escalation, capabilities drop ALL", cs)
		}
	})

	t.Run("resources", func(t *testing.T) {
		r := c.Resources
		if r.Requests.Memory().String() != "512Mi" || r.Requests.Cpu().String() != "1" || r.Limits.Memory().String() != "1Gi" {
			t.Errorf("resources %+v, want requests 512Mi and 1 cpu, memory limit 1Gi", r)
		}
	})

	t.Run("volumes", func(t *testing.T) {
		var state *corev1.VolumeMount
		var props *corev1.VolumeMount
		for i, m := range c.VolumeMounts {
			switch m.MountPath {
			case stateDir:
				state = &c.VolumeMounts[i]
			case propertiesPath:
				props = &c.VolumeMounts[i]
			}
		}
		if state == nil || state.ReadOnly {
			t.Fatalf("no writable mount at %s (the hostfile; the root filesystem is read-only)", stateDir)
		}
		if !hasEmptyDir(pod, state.Name) && !hasClaimTemplate(sts, state.Name) {
			t.Errorf("mount %s is neither an emptyDir nor a volumeClaimTemplate", state.Name)
		}
		if os.Getenv("EXPECT_CLIENT_PROPERTIES") != "" && props == nil {
			t.Fatalf("no client properties mounted at %s", propertiesPath)
		}
		if props == nil {
			return
		}
		if !props.ReadOnly || props.SubPath == "" {
			t.Errorf("client properties mount %+v, want readOnly with a subPath", props)
		}
		secretName := ""
		for _, v := range pod.Spec.Volumes {
			if v.Name == props.Name && v.Secret != nil {
				secretName = v.Secret.SecretName
			}
		}
		if secretName == "" {
			t.Fatalf("client properties volume %s is not a Secret", props.Name)
		}
		for _, s := range objects.Secrets {
			if s.Name == secretName && len(s.Data[props.SubPath]) == 0 {
				t.Errorf("Secret %s has no key %s", s.Name, props.SubPath)
			}
		}
	})

	t.Run("pod disruption budget", func(t *testing.T) {
		if len(objects.PDBs) != 1 {
			t.Fatalf("want one PodDisruptionBudget, got %d", len(objects.PDBs))
		}
		pdb := objects.PDBs[0]
		selects(t, "PodDisruptionBudget", pdb.Spec.Selector, pod.Labels)
		if !equalSelectors(pdb.Spec.Selector, sts.Spec.Selector) {
			t.Errorf("PDB selector %v differs from the StatefulSet's %v", pdb.Spec.Selector, sts.Spec.Selector)
		}
		if m := pdb.Spec.MaxUnavailable; m == nil || m.String() != "1" {
			t.Errorf("maxUnavailable %v, want 1", m)
		}
	})

	t.Run("http service", func(t *testing.T) {
		for _, s := range objects.Services {
			if s == headless {
				continue
			}
			if got := s.Spec.Selector["statefulset.kubernetes.io/pod-name"]; got != sts.Name+"-0" {
				t.Errorf("Service %s selects pod %q, want process 0 (%s-0)", s.Name, got, sts.Name)
			}
			for _, p := range s.Spec.Ports {
				if p.TargetPort.String() != "http" {
					t.Errorf("Service %s targets port %s, want http", s.Name, p.TargetPort.String())
				}
			}
		}
	})
}

func allMeta(o *Objects) []*metav1.ObjectMeta {
	var metas []*metav1.ObjectMeta
	for _, x := range o.StatefulSets {
		metas = append(metas, &x.ObjectMeta, &x.Spec.Template.ObjectMeta)
	}
	for _, x := range o.Services {
		metas = append(metas, &x.ObjectMeta)
	}
	for _, x := range o.Secrets {
		metas = append(metas, &x.ObjectMeta)
	}
	for _, x := range o.PDBs {
		metas = append(metas, &x.ObjectMeta)
	}
	return metas
}

func hasEmptyDir(pod *corev1.PodTemplateSpec, name string) bool {
	for _, v := range pod.Spec.Volumes {
		if v.Name == name && v.EmptyDir != nil {
			return true
		}
	}
	return false
}

func hasClaimTemplate(sts *appsv1.StatefulSet, name string) bool {
	for _, c := range sts.Spec.VolumeClaimTemplates {
		if c.Name == name {
			return true
		}
	}
	return false
}

func equalSelectors(a, b *metav1.LabelSelector) bool {
	sa, errA := metav1.LabelSelectorAsSelector(a)
	sb, errB := metav1.LabelSelectorAsSelector(b)
	return errA == nil && errB == nil && sa.String() == sb.String()
}

// A StatefulSet that decodes; the negative tests below change one thing in it.
const goodStatefulSet = `
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: rs
spec:
  serviceName: rs-hl
  podManagementPolicy: Parallel
  replicas: 2
  selector:
    matchLabels: {app: rs}
  template:
    metadata:
      labels: {app: rs}
    spec:
      containers:
        - name: dataflow
          image: retail-stream:0.1.0
`

func TestStrictDecodingAcceptsAValidManifest(t *testing.T) {
	o := &Objects{}
	if err := Decode(goodStatefulSet, o); err != nil {
		t.Fatal(err)
	}
	if len(o.StatefulSets) != 1 || o.StatefulSets[0].Spec.PodManagementPolicy != appsv1.ParallelPodManagement {
		t.Fatalf("decoded %+v", o.StatefulSets)
	}
}

func TestStrictDecodingRejects(t *testing.T) {
	for name, change := range map[string][2]string{
		"a misspelt field":           {"podManagementPolicy:", "podManagmentPolicy:"},
		"a field at the wrong level": {"      containers:", "      podManagementPolicy: Parallel\n      containers:"},
		"a wrong type":               {"replicas: 2", `replicas: "two"`},
		"an unknown kind":            {"kind: StatefulSet", "kind: Deployment"},
		"a wrong apiVersion":         {"apiVersion: apps/v1", "apiVersion: apps/v1beta2"},
		"a duplicate field":          {"  replicas: 2", "  replicas: 2\n  replicas: 3"},
	} {
		t.Run(name, func(t *testing.T) {
			doc := strings.Replace(goodStatefulSet, change[0], change[1], 1)
			if doc == goodStatefulSet {
				t.Fatalf("%q is not in the manifest", change[0])
			}
			if err := Decode(doc, &Objects{}); err == nil {
				t.Fatalf("decoded without error:\n%s", doc)
			} else {
				t.Logf("rejected: %v", err)
			}
		})
	}
}

func TestSplitLeavesOutCommentOnlyDocuments(t *testing.T) {
	stream := "---\n# Source: a.yaml\n---\n# Source: b.yaml\nkind: X\n---   \n\n---\nkind: Y\n"
	docs := Split(stream)
	if len(docs) != 2 || !strings.Contains(docs[0], "kind: X") || !strings.Contains(docs[1], "kind: Y") {
		t.Fatalf("split into %q", docs)
	}
}
