// tests/integration/node_fetch_upload.mjs - PUT /v1/adapters/NAME with Node's own fetch and a
// FormData body, as a browser or a Node client would send an adapter: N times, each with one
// part of SIZE bytes, the key given. Prints one JSON line: the status and error code of every
// answer, or "reset: <message>" where the answer was lost.
//
//   node node_fetch_upload.mjs URL NAME N SIZE KEY
const [url, name, n, size, key] = process.argv.slice(2);
const out = [];
for (let i = 0; i < Number(n); i++) {
    const form = new FormData();
    form.append("adapter_config.json", new Blob(['{"peft_type": "LORA"}']), "adapter_config.json");
    form.append("adapter_model.safetensors", new Blob([new Uint8Array(Number(size))]),
                "adapter_model.safetensors");
    try {
        const r = await fetch(`${url}/v1/adapters/${name}`, {
            method: "PUT", body: form,
            headers: key ? { Authorization: `Bearer ${key}` } : {},
        });
        const body = await r.json();
        out.push([r.status, body.error ? body.error.code : null]);
    } catch (e) {
        out.push(["reset: " + (e.cause ? e.cause.code || e.cause.message : e.message), null]);
    }
}
console.log(JSON.stringify(out));
