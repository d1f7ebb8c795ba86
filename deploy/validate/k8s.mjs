// deploy/validate/k8s.mjs - checks the Kubernetes manifests in a directory, offline.
//
//   node deploy/validate/k8s.mjs deploy/k8s [deploy/k8s/store] [--yunmind build/server/yunmind]
//
// The directories' manifests are checked as one set (what `kubectl apply -f` of each would
// create together).
// 1. YAML: every document parses, with no duplicate keys.
// 2. Schema: kubernetes-models validates each object against the JSON schema of its
//    apiVersion/kind, generated from the Kubernetes API's OpenAPI document (types, required
//    fields, enums, int-or-string, quantities).
// 3. Unknown fields: those schemas allow extra properties (as the API server does unless asked
//    for strict decoding), so a misspelt field would pass. The TypeScript compiler checks the
//    same objects against kubernetes-types' declarations, which reject properties they do not
//    declare (what `kubectl apply --validate=strict` would refuse).
// 4. Consistency with yunmind: the ConfigMap's yunmind.json is accepted by
//    `yunmind --print-config` (when --yunmind is given); probes, port, grace period, mounts
//    and names agree with it and with each other. With the optional store (a Deployment
//    named yunmin-store): its Service, NetworkPolicy and Secret agree with the replicas'
//    environment, and its maxmemory fits its memory limit.
// Prints one line per problem and exits 1 if there was any.

import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { execFileSync } from "node:child_process";
import { createRequire } from "node:module";
import { parseAllDocuments } from "yaml";

const require = createRequire(import.meta.url);
const ts = require("typescript");

const args = process.argv.slice(2);
const yi = args.indexOf("--yunmind");
const yunmind = yi >= 0 ? args[yi + 1] : null;
const dirs = args.filter((a, i) => yi < 0 || (i !== yi && i !== yi + 1));
const dir = dirs.join(" ");
if (!dirs.length) {
    console.error("usage: node k8s.mjs DIR... [--yunmind YUNMIND]");
    process.exit(2);
}

const problems = [];
const problem = (where, msg) => problems.push(`${where}: ${msg}`);

// ---- 1. parse ---------------------------------------------------------------------------
const objects = []; // {file, index, obj}
for (const file of dirs.flatMap((d) => fs.readdirSync(d).filter((f) => /\.ya?ml$/.test(f))
                                   .sort().map((f) => path.join(d, f)))) {
    const docs = parseAllDocuments(fs.readFileSync(file, "utf8"), { uniqueKeys: true });
    docs.forEach((doc, index) => {
        for (const e of [...doc.errors, ...doc.warnings])
            problem(`${file}#${index}`, `YAML: ${e.message}`);
        const obj = doc.toJS();
        if (obj !== null && obj !== undefined)
            objects.push({ file, index, obj });
    });
}
if (objects.length === 0)
    problem(dir, "no Kubernetes objects found");

// ---- 2. schema --------------------------------------------------------------------------
function modelPath(apiVersion, kind) {
    // "v1" -> kubernetes-models/v1/Kind; "apps/v1" -> kubernetes-models/apps/v1/Kind
    return `kubernetes-models/${apiVersion}/${kind}`;
}
for (const { file, index, obj } of objects) {
    const where = `${file}#${index} ${obj.kind}/${obj.metadata?.name}`;
    if (typeof obj.apiVersion !== "string" || typeof obj.kind !== "string") {
        problem(where, "no apiVersion or kind");
        continue;
    }
    let mod;
    try {
        mod = require(modelPath(obj.apiVersion, obj.kind));
    } catch (e) {
        problem(where, `no schema for ${obj.apiVersion} ${obj.kind} (unknown or removed API)`);
        continue;
    }
    try {
        new mod[obj.kind](obj).validate();
    } catch (e) {
        problem(where, `schema: ${e.message}`);
    }
}

// ---- 3. unknown fields (TypeScript excess-property checks) -------------------------------
const tsType = {
    "v1/ConfigMap": ["core/v1", "ConfigMap"],
    "v1/Secret": ["core/v1", "Secret"],
    "v1/Service": ["core/v1", "Service"],
    "v1/PersistentVolumeClaim": ["core/v1", "PersistentVolumeClaim"],
    "apps/v1/Deployment": ["apps/v1", "Deployment"],
    "autoscaling/v2/HorizontalPodAutoscaler": ["autoscaling/v2", "HorizontalPodAutoscaler"],
    "policy/v1/PodDisruptionBudget": ["policy/v1", "PodDisruptionBudget"],
    "networking.k8s.io/v1/NetworkPolicy": ["networking/v1", "NetworkPolicy"],
};
{
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "yunmin-k8s-"));
    const src = path.join(tmp, "manifests.ts");
    const lines = [];
    const owner = []; // line number -> object description
    const imports = new Map();
    for (const { file, index, obj } of objects) {
        const key = `${obj.apiVersion}/${obj.kind}`;
        const t = tsType[key];
        if (!t) {
            problem(`${file}#${index}`, `no TypeScript declaration mapped for ${key}`);
            continue;
        }
        const alias = t[0].replace(/[^a-z0-9]/gi, "_");
        imports.set(alias, t[0]);
        const text = `export const o${lines.length} : ${alias}.${t[1]} = ${JSON.stringify(obj, null, 1)};`;
        lines.push(text);
        owner.push(`${file}#${index} ${obj.kind}/${obj.metadata?.name}`);
    }
    const header = [...imports].map(([alias, mod]) =>
        `import type * as ${alias} from ${JSON.stringify(path.resolve(path.dirname(
            require.resolve("kubernetes-types/package.json")), mod))};`);
    // One object per block; remember where each starts to name the culprit.
    let text = header.join("\n") + "\n";
    const starts = [];
    for (const l of lines) {
        starts.push(text.split("\n").length);
        text += l + "\n";
    }
    fs.writeFileSync(src, text);
    const program = ts.createProgram([src], {
        noEmit: true, strict: true, skipLibCheck: false, types: [],
        module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022,
        moduleResolution: ts.ModuleResolutionKind.Node10,
    });
    for (const d of ts.getPreEmitDiagnostics(program)) {
        const msg = ts.flattenDiagnosticMessageText(d.messageText, " ");
        let where = "typescript";
        if (d.file && d.start !== undefined) {
            const line = d.file.getLineAndCharacterOfPosition(d.start).line + 1;
            let k = 0;
            while (k + 1 < starts.length && starts[k + 1] <= line)
                k++;
            const snippet = d.file.text.split("\n")[line - 1].trim().slice(0, 80);
            where = `${owner[k]} (near ${snippet})`;
        }
        problem(where, `fields: ${msg}`);
    }
    fs.rmSync(tmp, { recursive: true, force: true });
}

// ---- 4. consistency with yunmind and among the objects -----------------------------------
const byKind = (kind) => objects.filter((o) => o.obj.kind === kind).map((o) => o.obj);
const named = (kind, name) => byKind(kind).find((o) => o.metadata?.name === name);
const deploy = named("Deployment", "yunmind");
const [cm] = byKind("ConfigMap");
const svc = named("Service", "yunmind");
const [hpa] = byKind("HorizontalPodAutoscaler");
const secrets = byKind("Secret");
const pvcs = byKind("PersistentVolumeClaim");
const need = (cond, msg) => { if (!cond) problem("consistency", msg); };

need(deploy && cm && svc && hpa && secrets.length && pvcs.length,
     "want a Deployment, a ConfigMap, a Service, a HorizontalPodAutoscaler, a Secret and a PVC");
if (deploy && cm) {
    let conf = {};
    try {
        conf = JSON.parse(cm.data["yunmind.json"]);
    } catch (e) {
        problem("ConfigMap", `yunmind.json is not JSON: ${e.message}`);
    }
    if (yunmind) {
        const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "yunmin-conf-"));
        const f = path.join(tmp, "yunmind.json");
        fs.writeFileSync(f, cm.data["yunmind.json"]);
        try {
            const env = Object.fromEntries(Object.entries(process.env)
                .filter(([k]) => !k.startsWith("YUNMIN_")));
            const eff = JSON.parse(execFileSync(yunmind, ["--config", f, "--print-config"],
                { env, stdio: ["ignore", "pipe", "pipe"] }).toString());
            conf = Object.assign(eff, conf);
        } catch (e) {
            problem("ConfigMap", `yunmind refuses yunmind.json: ${(e.stderr || e.message).toString().trim()}`);
        }
        fs.rmSync(tmp, { recursive: true, force: true });
    }
    const pod = deploy.spec.template.spec;
    const c = pod.containers.find((x) => x.name === "yunmind");
    need(c, "the Deployment has no container named yunmind");
    if (c) {
        const port = c.ports?.find((p) => p.name === "http")?.containerPort;
        need(port === (conf.port ?? 8080), `container port ${port} != yunmind.json port ${conf.port}`);
        need(conf.host === "0.0.0.0" || conf.host === "::", "yunmind.json host must be 0.0.0.0 or :: in a pod");
        need(c.readinessProbe?.httpGet?.path === "/readyz", "readiness probe must GET /readyz");
        need(c.livenessProbe?.httpGet?.path === "/healthz", "liveness probe must GET /healthz");
        const drain = conf.drain_timeout_s ?? 30;
        const pre = c.lifecycle?.preStop?.exec?.command;
        const preSleep = pre && pre[0] === "sleep" ? Number(pre[1]) : 0;
        const grace = pod.terminationGracePeriodSeconds ?? 30;
        need(grace > preSleep + drain,
             `terminationGracePeriodSeconds ${grace} must exceed preStop ${preSleep} s + drain_timeout_s ${drain} s`);
        const env = Object.fromEntries((c.env || []).map((e) => [e.name, e.value]));
        const mounts = Object.fromEntries((c.volumeMounts || []).map((m) => [m.name, m.mountPath]));
        const vols = Object.fromEntries((pod.volumes || []).map((v) => [v.name, v]));
        need(env.YUNMIN_CONFIG === path.posix.join(mounts.config || "?", "yunmind.json"),
             "YUNMIN_CONFIG must name yunmind.json in the ConfigMap's mount");
        need(vols.config?.configMap?.name === cm.metadata.name, "the config volume must be the ConfigMap");
        const sec = secrets.find((s) => s.metadata.name === vols.tenants?.secret?.secretName);
        need(sec, "the tenants volume must be a Secret defined here");
        if (sec)
            need(conf.tenants_file === path.posix.join(mounts.tenants || "?",
                                                        Object.keys(sec.stringData || sec.data)[0]),
                 "tenants_file must name the Secret's file in its mount");
        const pvc = pvcs.find((p) => p.metadata.name === vols.adapters?.persistentVolumeClaim?.claimName);
        need(pvc, "the adapters volume must be a PVC defined here");
        if (pvc)
            need(pvc.spec.accessModes.includes("ReadWriteMany"), "the adapter PVC must be ReadWriteMany");
        need(conf.adapter_dir === mounts.adapters, "adapter_dir must be the adapter volume's mount");
        if (conf.state_dir) {
            need(conf.state_dir === mounts.state, "state_dir must be the state volume's mount");
            need(vols.state?.emptyDir || vols.state?.persistentVolumeClaim,
                 "the state volume must be an emptyDir or a PVC (one per pod)");
        }
        // Guaranteed QoS: every container's requests equal its limits (and the yunmind
        // container's whole CPUs can then be its own under the static CPU manager).
        for (const x of pod.containers)
            for (const r of ["cpu", "memory"])
                need(x.resources?.requests?.[r] !== undefined &&
                     String(x.resources.requests[r]) === String(x.resources?.limits?.[r]),
                     `container ${x.name}: ${r} request and limit must be set and equal`);
        need(pod.securityContext?.runAsNonRoot === true, "pods must run as non-root");
    }
    const labels = deploy.spec.template.metadata.labels;
    for (const [k, v] of Object.entries(deploy.spec.selector.matchLabels))
        need(labels[k] === v, "the Deployment's selector must match its pod labels");
    if (svc) {
        for (const [k, v] of Object.entries(svc.spec.selector))
            need(labels[k] === v, "the Service's selector must match the pod labels");
        need(svc.spec.ports.some((p) => p.targetPort === "http"), "the Service must target the http port");
    }
    if (hpa) {
        need(hpa.spec.scaleTargetRef.kind === "Deployment" &&
             hpa.spec.scaleTargetRef.name === deploy.metadata.name,
             "the HorizontalPodAutoscaler must target the Deployment");
        need(hpa.spec.minReplicas >= 2, "keep at least two replicas");
    }
}

// Environment taken from Secrets: a Secret not in this set must be marked optional (the
// store's Secret is applied only with the store).
if (deploy) {
    for (const x of deploy.spec.template.spec.containers)
        for (const e of x.env || []) {
            const ref = e.valueFrom?.secretKeyRef;
            if (!ref)
                continue;
            const sec = byKind("Secret").find((s) => s.metadata.name === ref.name);
            if (sec)
                need(ref.key in (sec.stringData || sec.data || {}),
                     `env ${e.name}: Secret ${ref.name} has no key ${ref.key}`);
            else
                need(ref.optional === true,
                     `env ${e.name}: Secret ${ref.name} is not defined here, so it must be optional`);
        }
}
const store = named("Deployment", "yunmin-store");
if (store && deploy) {
    const pod = store.spec.template.spec;
    const labels = store.spec.template.metadata.labels;
    for (const [k, v] of Object.entries(store.spec.selector.matchLabels))
        need(labels[k] === v, "the store Deployment's selector must match its pod labels");
    need(store.spec.replicas === 1 && store.spec.strategy?.type === "Recreate",
         "the store must be one instance, replaced with Recreate (two would split the writes)");
    need(pod.securityContext?.runAsNonRoot === true, "the store pod must run as non-root");
    const [c] = pod.containers;
    for (const r of ["cpu", "memory"])
        need(c.resources?.requests?.[r] !== undefined &&
             String(c.resources.requests[r]) === String(c.resources?.limits?.[r]),
             `container ${c.name}: ${r} request and limit must be set and equal`);
    const cmd = c.command || [];
    const mm = cmd.indexOf("--maxmemory");
    const bytes = (q) => {
        const m = /^(\d+)(Ki|Mi|Gi|kb|mb|gb)?$/i.exec(String(q));
        if (!m) return NaN;
        const unit = { ki: 1024, mi: 1 << 20, gi: 1 << 30, kb: 1024, mb: 1 << 20, gb: 1 << 30 };
        return Number(m[1]) * (m[2] ? unit[m[2].toLowerCase()] : 1);
    };
    need(mm >= 0 && cmd[cmd.indexOf("--maxmemory-policy") + 1]?.endsWith("-lru"),
         "the store needs --maxmemory and an LRU --maxmemory-policy (it holds no data of record)");
    if (mm >= 0)
        need(bytes(cmd[mm + 1]) < bytes(c.resources?.limits?.memory),
             `store --maxmemory ${cmd[mm + 1]} must stay below its memory limit`);
    need(cmd.includes("--save") && cmd.includes("--appendonly"),
         "the store must not persist (--save \"\" --appendonly no)");
    const cport = c.ports?.find((p) => p.name === "redis")?.containerPort;
    const ssvc = byKind("Service").find((s) =>
        Object.entries(s.spec.selector || {}).every(([k, v]) => labels[k] === v) &&
        Object.keys(s.spec.selector || {}).length > 0);
    need(ssvc, "no Service selects the store's pods");
    const sp = ssvc?.spec.ports.find((p) => p.targetPort === "redis" || p.targetPort === cport);
    need(sp, "the store Service must target the redis port");
    // The replicas' YUNMIN_SESSION_STORE and YUNMIN_STATE_SECRET come from one Secret here.
    const yc = deploy.spec.template.spec.containers.find((x) => x.name === "yunmind");
    const env = Object.fromEntries((yc?.env || []).map((e) => [e.name, e.valueFrom?.secretKeyRef]));
    const secOf = (ref) => ref && byKind("Secret").find((s) => s.metadata.name === ref.name);
    const val = (ref) => { const s = secOf(ref); return s && (s.stringData || {})[ref.key]; };
    need(secOf(env.YUNMIN_SESSION_STORE) && secOf(env.YUNMIN_STATE_SECRET),
         "with the store, YUNMIN_SESSION_STORE and YUNMIN_STATE_SECRET must come from a Secret defined here");
    const url = val(env.YUNMIN_SESSION_STORE);
    const m = url ? /^redis:\/\/([^:/]+):(\d+)\/(\d+)$/.exec(url) : null;
    need(m && ssvc && (m[1] === ssvc.metadata.name || m[1].startsWith(ssvc.metadata.name + ".")) &&
         sp && Number(m[2]) === sp.port,
         `session_store ${url} must name the store Service and its port`);
    const np = byKind("NetworkPolicy").find((n) =>
        Object.entries(n.spec.podSelector.matchLabels || {}).every(([k, v]) => labels[k] === v));
    need(np, "a NetworkPolicy must guard the store (it has no password)");
    if (np) {
        const yl = deploy.spec.template.metadata.labels;
        need(np.spec.ingress?.length && np.spec.ingress.every((r) => (r.from || []).length &&
             r.from.every((f) => f.podSelector && Object.entries(f.podSelector.matchLabels || {})
                 .every(([k, v]) => yl[k] === v))),
             "the store's NetworkPolicy must admit the yunmind pods only");
    }
}

for (const p of problems)
    console.log(p);
console.log(`k8s: ${objects.length} objects in ${dir}, ${problems.length} problems`);
process.exit(problems.length ? 1 : 0);
