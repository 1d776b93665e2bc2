// Validates ServiceMonitor objects (a JSON array on stdin) against the
// Prometheus Operator's CRD schema, as packaged by
// @kubernetes-models/prometheus-operator (JSON Schema generated from the
// operator's CRDs; package-lock.json pins it). Exit 1 naming each problem.
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";

let input = "";
for await (const chunk of process.stdin) input += chunk;
let failed = false;
for (const object of JSON.parse(input)) {
  const name = object?.metadata?.name ?? "(unnamed)";
  try {
    new ServiceMonitor(object).validate();
    console.log(`servicemonitor/${name}: valid`);
  } catch (error) {
    failed = true;
    console.error(`servicemonitor/${name}: ${error.message}`);
  }
}
process.exit(failed ? 1 : 0);
