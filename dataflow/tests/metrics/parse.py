"""Parses Prometheus text (stdin) with the Prometheus client library's own parser, for
dataflow/tests/http.rs: prints one JSON object, family name -> {"type", "samples": [[sample
name, labels, value], ...]}. A text the parser refuses fails the test."""

import json
import sys

from prometheus_client.parser import text_string_to_metric_families

families = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    families[family.name] = {
        "type": family.type,
        "samples": [[s.name, s.labels, s.value] for s in family.samples],
    }
json.dump(families, sys.stdout)
