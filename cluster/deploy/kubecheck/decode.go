// Package kubecheck checks the retail-stream chart's rendered manifests against the
// Kubernetes API types: every document decodes strictly (no unknown field, no wrong type)
// into the typed object of its kind, so a misspelt or misplaced field fails before any
// cluster sees it.
package kubecheck

import (
	"fmt"
	"regexp"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// Objects are the decoded documents of one rendering, by kind.
type Objects struct {
	StatefulSets []*appsv1.StatefulSet
	Services     []*corev1.Service
	Secrets      []*corev1.Secret
	PDBs         []*policyv1.PodDisruptionBudget
}

var separator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// Split cuts a multi-document YAML stream into its documents, leaving out those with
// nothing but comments and blank lines (helm template's "# Source:" lines stay with theirs).
func Split(stream string) []string {
	var docs []string
	for _, doc := range separator.Split(stream, -1) {
		for _, line := range strings.Split(doc, "\n") {
			line = strings.TrimSpace(line)
			if line != "" && !strings.HasPrefix(line, "#") {
				docs = append(docs, doc)
				break
			}
		}
	}
	return docs
}

// Decode decodes one document strictly into the typed object its apiVersion and kind name.
// A kind the chart does not render is an error.
func Decode(doc string, into *Objects) error {
	var meta metav1.TypeMeta
	if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
		return fmt.Errorf("reading apiVersion and kind: %w", err)
	}
	var obj any
	switch meta.APIVersion + " " + meta.Kind {
	case "apps/v1 StatefulSet":
		o := &appsv1.StatefulSet{}
		into.StatefulSets = append(into.StatefulSets, o)
		obj = o
	case "v1 Service":
		o := &corev1.Service{}
		into.Services = append(into.Services, o)
		obj = o
	case "v1 Secret":
		o := &corev1.Secret{}
		into.Secrets = append(into.Secrets, o)
		obj = o
	case "policy/v1 PodDisruptionBudget":
		o := &policyv1.PodDisruptionBudget{}
		into.PDBs = append(into.PDBs, o)
		obj = o
	default:
		return fmt.Errorf("unexpected kind %q of apiVersion %q", meta.Kind, meta.APIVersion)
	}
	if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
		return fmt.Errorf("%s %s: %w", meta.APIVersion, meta.Kind, err)
	}
	return nil
}

// DecodeAll decodes every document of a stream.
func DecodeAll(stream string) (*Objects, error) {
	objects := &Objects{}
	for i, doc := range Split(stream) {
		if err := Decode(doc, objects); err != nil {
			return nil, fmt.Errorf("document %d: %w", i+1, err)
		}
	}
	return objects, nil
}
