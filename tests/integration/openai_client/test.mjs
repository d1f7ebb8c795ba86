// The official `openai` npm client, used exactly as an application would, against a running
// yunmind: the same calls must work against api.openai.com and against us.
//
//   node test.mjs http://127.0.0.1:PORT [MODEL_ID]
//
// MODEL_ID is the id the server is expected to serve; without it, the first id that
// /v1/models lists is used. Every check runs; each prints "ok" or "FAIL" with what was
// expected and what came back, and the exit code is 1 when any failed (2 on bad usage).
import OpenAI from 'openai';

const base = process.argv[2];
const expectModel = process.argv[3];
if (!base || !/^https?:\/\//.test(base)) {
    console.error('usage: node test.mjs http://127.0.0.1:PORT [MODEL_ID]');
    process.exit(2);
}

// No retries: a 5xx or a dropped connection must show up as a failure, not be papered over.
const client = new OpenAI({
    baseURL: base.replace(/\/+$/, '') + '/v1',
    apiKey: 'unused',
    maxRetries: 0,
    timeout: 120 * 1000,
});

const PROMPT = 'ROMEO:';
const MAX_TOKENS = 20;
let failures = 0;

class CheckError extends Error {}

function check(cond, what) {
    if (!cond)
        throw new CheckError(what);
}

function show(v) {
    return JSON.stringify(v);
}

async function test(name, fn) {
    try {
        await fn();
        console.log(`ok    ${name}`);
    } catch (e) {
        failures++;
        const why = e instanceof CheckError ? e.message
                                            : `unexpected ${e?.constructor?.name}: ${e?.message}`;
        console.log(`FAIL  ${name}: ${why}`);
    }
}

function isCount(n) {
    return Number.isInteger(n) && n >= 0;
}

function checkUsage(u, where) {
    check(u && typeof u === 'object', `${where}: usage missing (got ${show(u)})`);
    check(isCount(u.prompt_tokens) && u.prompt_tokens > 0,
          `${where}: usage.prompt_tokens = ${show(u.prompt_tokens)}, want a positive integer`);
    check(isCount(u.completion_tokens) && u.completion_tokens >= 1 &&
              u.completion_tokens <= MAX_TOKENS,
          `${where}: usage.completion_tokens = ${show(u.completion_tokens)}, ` +
              `want 1..${MAX_TOKENS}`);
    check(u.total_tokens === u.prompt_tokens + u.completion_tokens,
          `${where}: usage.total_tokens = ${u.total_tokens}, want prompt_tokens + ` +
              `completion_tokens = ${u.prompt_tokens + u.completion_tokens}`);
}

let model = expectModel;
let reference = null; // the non-streaming completion the other checks compare with

await test('models.list() returns the served model', async () => {
    const page = await client.models.list();
    const ids = [];
    for await (const m of page) {
        check(m.object === 'model', `model entry has object ${show(m.object)}, want "model"`);
        ids.push(m.id);
    }
    check(ids.length > 0, 'the list is empty');
    if (model === undefined)
        model = ids[0];
    check(ids.includes(model), `served id ${show(model)} not among ${show(ids)}`);
});
if (model === undefined) {
    console.log('FAIL  no model id to test with; stopping');
    process.exit(1);
}

const request = {model, prompt: PROMPT, max_tokens: MAX_TOKENS, temperature: 0};

await test('completions.create, non-streaming', async () => {
    const c = await client.completions.create(request);
    check(c.object === 'text_completion', `object = ${show(c.object)}, want "text_completion"`);
    check(typeof c.id === 'string' && c.id.length > 0, `id = ${show(c.id)}`);
    check(c.model === model, `model = ${show(c.model)}, want ${show(model)}`);
    check(Number.isInteger(c.created) && c.created > 0, `created = ${show(c.created)}`);
    check(Array.isArray(c.choices) && c.choices.length === 1,
          `want exactly one choice, got ${show(c.choices)}`);
    const ch = c.choices[0];
    check(ch.index === 0, `choices[0].index = ${show(ch.index)}`);
    check(typeof ch.text === 'string' && ch.text.length > 0, `text = ${show(ch.text)}`);
    check(ch.finish_reason === 'stop' || ch.finish_reason === 'length',
          `finish_reason = ${show(ch.finish_reason)}, want "stop" or "length"`);
    checkUsage(c.usage, 'non-streaming');
    if (ch.finish_reason === 'length')
        check(c.usage.completion_tokens === MAX_TOKENS,
              `finish_reason "length" with completion_tokens ${c.usage.completion_tokens}, ` +
                  `want max_tokens = ${MAX_TOKENS}`);
    reference = c;
});

await test('completions.create, streaming with include_usage', async () => {
    check(reference !== null, 'needs the non-streaming result, which failed');
    const stream = await client.completions.create(
        {...request, stream: true, stream_options: {include_usage: true}});
    let text = '', nText = 0, finish = null, usage = null, afterUsage = 0;
    for await (const chunk of stream) {
        check(chunk.object === 'text_completion',
              `chunk object = ${show(chunk.object)}, want "text_completion"`);
        if (usage !== null)
            afterUsage++;
        if (chunk.choices.length === 0) {
            check(usage === null, 'more than one usage chunk');
            usage = chunk.usage;
            continue;
        }
        check(chunk.choices.length === 1, `chunk with ${chunk.choices.length} choices`);
        check(finish === null, 'a text chunk after the one carrying finish_reason');
        const ch = chunk.choices[0];
        check(typeof ch.text === 'string', `chunk text = ${show(ch.text)}`);
        // With include_usage, OpenAI sends "usage": null on every chunk but the last.
        check(chunk.usage === null || chunk.usage === undefined,
              `a text chunk carries usage ${show(chunk.usage)}`);
        text += ch.text;
        nText++;
        finish = ch.finish_reason ?? null;
    }
    check(nText > 0, 'no text chunks');
    check(text === reference.choices[0].text,
          `streamed text ${show(text)} differs from the non-streaming ${show(
              reference.choices[0].text)}`);
    check(finish === reference.choices[0].finish_reason,
          `last finish_reason ${show(finish)}, non-streaming ${show(
              reference.choices[0].finish_reason)}`);
    check(usage !== null, 'no usage chunk (choices: []) at the end');
    check(afterUsage === 0, `${afterUsage} chunks after the usage chunk`);
    checkUsage(usage, 'streaming');
    for (const k of ['prompt_tokens', 'completion_tokens', 'total_tokens'])
        check(usage[k] === reference.usage[k],
              `streamed usage.${k} = ${usage[k]}, non-streaming ${reference.usage[k]}`);
});

await test('completions.create with logprobs: 2', async () => {
    check(reference !== null, 'needs the non-streaming result, which failed');
    const c = await client.completions.create({...request, logprobs: 2});
    const ch = c.choices?.[0];
    check(ch && ch.text === reference.choices[0].text,
          `text ${show(ch?.text)} differs from the run without logprobs ${show(
              reference.choices[0].text)}`);
    const lp = ch.logprobs;
    check(lp && typeof lp === 'object', `logprobs = ${show(lp)}, want an object`);
    for (const k of ['tokens', 'token_logprobs', 'top_logprobs', 'text_offset'])
        check(Array.isArray(lp[k]), `logprobs.${k} = ${show(lp[k])}, want an array`);
    const n = lp.tokens.length;
    check(n >= 1, 'logprobs.tokens is empty');
    // A stop on the end-of-text token counts as a completion token but has no text.
    check(n === c.usage.completion_tokens ||
              (ch.finish_reason === 'stop' && n === c.usage.completion_tokens - 1),
          `${n} tokens listed, usage.completion_tokens = ${c.usage.completion_tokens}`);
    for (const k of ['token_logprobs', 'top_logprobs', 'text_offset'])
        check(lp[k].length === n, `logprobs.${k} has ${lp[k].length} entries, tokens has ${n}`);
    for (let i = 0; i < n; i++) {
        const t = lp.tokens[i], p = lp.token_logprobs[i], top = lp.top_logprobs[i];
        check(typeof t === 'string', `tokens[${i}] = ${show(t)}`);
        check(typeof p === 'number' && Number.isFinite(p) && p <= 1e-6,
              `token_logprobs[${i}] = ${show(p)}, want a finite number <= 0`);
        check(top && typeof top === 'object', `top_logprobs[${i}] = ${show(top)}`);
        const alts = Object.entries(top);
        check(alts.length >= 1 && alts.length <= 3,
              `top_logprobs[${i}] has ${alts.length} entries, want 1..3 (logprobs + the sampled)`);
        check(t in top, `top_logprobs[${i}] lacks the sampled token ${show(t)}`);
        // Greedy decoding picks the most likely token.
        const best = Math.max(...alts.map(([, v]) => v));
        check(p >= best - 1e-4,
              `temperature 0 sampled ${show(t)} (logprob ${p}) but ${show(top)} has ${best}`);
        check(Number.isInteger(lp.text_offset[i]) &&
                  (i === 0 || lp.text_offset[i] >= lp.text_offset[i - 1]),
              `text_offset[${i}] = ${show(lp.text_offset[i])}`);
    }
});

await test('completions.create: the response id is the x-request-id header', async () => {
    const c = await client.completions.create({...request, max_tokens: 2});
    check(typeof c.id === 'string' && c.id.startsWith('cmpl-'), `id = ${show(c.id)}`);
    check(c._request_id === c.id, `x-request-id ${show(c._request_id)}, id ${show(c.id)}`);
});

const PROMPTS = [PROMPT, 'JULIET:'];

await test('completions.create with a list of prompts and n: 2', async () => {
    const c = await client.completions.create({...request, prompt: PROMPTS, n: 2});
    check(c.choices.length === 4, `${c.choices.length} choices, want 2 prompts x n 2 = 4`);
    check(c.choices.every((ch, i) => ch.index === i),
          `indexes ${show(c.choices.map(ch => ch.index))}, want [0, 1, 2, 3]`);
    let prompt = 0, completion = 0;
    for (let p = 0; p < PROMPTS.length; p++) {
        const one = await client.completions.create({...request, prompt: PROMPTS[p]});
        for (let j = 0; j < 2; j++)
            check(c.choices[p * 2 + j].text === one.choices[0].text,
                  `choice ${p * 2 + j}: ${show(c.choices[p * 2 + j].text)}, prompt ${p} ` +
                      `alone: ${show(one.choices[0].text)}`);
        prompt += one.usage.prompt_tokens;
        completion += 2 * one.usage.completion_tokens;
    }
    check(c.usage.prompt_tokens === prompt && c.usage.completion_tokens === completion,
          `usage ${show(c.usage)}, want prompt_tokens ${prompt}, completion_tokens ${completion}`);
});

await test('completions.create with a list of token-id lists, streaming', async () => {
    const ids = [[510, 1110, 27], [27]];
    const stream = await client.completions.create(
        {...request, prompt: ids, stream: true, max_tokens: 4});
    const texts = ['', ''], fins = [null, null];
    for await (const chunk of stream) {
        for (const ch of chunk.choices) {
            check(ch.index === 0 || ch.index === 1, `chunk index ${show(ch.index)}`);
            check(fins[ch.index] === null, `output for ${ch.index} after its finish_reason`);
            texts[ch.index] += ch.text;
            fins[ch.index] = ch.finish_reason ?? null;
        }
    }
    for (let p = 0; p < 2; p++) {
        const one = await client.completions.create({...request, prompt: ids[p], max_tokens: 4});
        check(texts[p] === one.choices[0].text,
              `streamed choice ${p}: ${show(texts[p])}, alone: ${show(one.choices[0].text)}`);
        check(fins[p] === one.choices[0].finish_reason, `finish_reason ${show(fins[p])}`);
    }
});

await test('completions.create with echo and logprobs, max_tokens 0: a scored prompt',
           async () => {
    const c = await client.completions.create(
        {...request, prompt: 'ROMEO:\nWhat light', max_tokens: 0, echo: true, logprobs: 1});
    const ch = c.choices[0], lp = ch.logprobs;
    check(ch.text === 'ROMEO:\nWhat light', `text = ${show(ch.text)}`);
    check(c.usage.completion_tokens === 0, `completion_tokens ${c.usage.completion_tokens}`);
    check(lp.tokens.length === c.usage.prompt_tokens,
          `${lp.tokens.length} tokens, prompt_tokens ${c.usage.prompt_tokens}`);
    check(lp.tokens.join('') === ch.text, `tokens ${show(lp.tokens)} do not spell the prompt`);
    check(lp.token_logprobs[0] === null && lp.top_logprobs[0] === null,
          `the first prompt token has ${show(lp.token_logprobs[0])} / ${show(lp.top_logprobs[0])}`);
    for (let i = 1; i < lp.tokens.length; i++) {
        const p = lp.token_logprobs[i];
        check(typeof p === 'number' && Number.isFinite(p) && p <= 1e-6,
              `token_logprobs[${i}] = ${show(p)}`);
        check(lp.tokens[i] in lp.top_logprobs[i],
              `top_logprobs[${i}] lacks the prompt's token ${show(lp.tokens[i])}`);
        check(lp.text_offset[i] > lp.text_offset[i - 1], `text_offset ${show(lp.text_offset)}`);
    }
});

await test('completions.create with echo and logprobs: prompt, then the answer', async () => {
    check(reference !== null, 'needs the non-streaming result, which failed');
    const c = await client.completions.create({...request, echo: true, logprobs: 2});
    const plain = await client.completions.create({...request, logprobs: 2});
    const ch = c.choices[0];
    check(ch.text === PROMPT + reference.choices[0].text, `text = ${show(ch.text)}`);
    const n = c.usage.prompt_tokens;
    check(show(ch.logprobs.tokens.slice(n)) === show(plain.choices[0].logprobs.tokens),
          `generated tokens ${show(ch.logprobs.tokens.slice(n))}, without echo ${show(
              plain.choices[0].logprobs.tokens)}`);
    check(ch.logprobs.token_logprobs[0] === null, 'the first prompt token has a logprob');
    const stream = await client.completions.create(
        {...request, echo: true, logprobs: 2, stream: true});
    let first = null, text = '';
    for await (const chunk of stream) {
        if (first === null)
            first = chunk.choices[0];
        text += chunk.choices[0]?.text ?? '';
    }
    check(first.text === PROMPT, `the first chunk's text ${show(first.text)}, want the prompt`);
    check(show(first.logprobs?.tokens) === show(ch.logprobs.tokens.slice(0, n)),
          `the first chunk's tokens ${show(first.logprobs?.tokens)}`);
    check(text === ch.text, `streamed ${show(text)}, non-streaming ${show(ch.text)}`);
});

async function expectError(name, params, Cls, status, param) {
    await test(name, async () => {
        let err = null;
        try {
            await client.completions.create(params);
        } catch (e) {
            err = e;
        }
        check(err !== null, 'the request succeeded');
        check(err instanceof Cls,
              `raised ${err?.constructor?.name} (status ${err?.status}), want ${Cls.name}`);
        check(err.status === status, `status ${err.status}, want ${status}`);
        if (param !== undefined)
            check(err.param === param,
                  `error.param = ${show(err.param)} (message ${show(err.message)}), want ` +
                      show(param));
    });
}

await expectError('temperature: 5 raises BadRequestError naming temperature',
                  {...request, temperature: 5}, OpenAI.BadRequestError, 400, 'temperature');
await expectError('a list mixing strings and token ids raises BadRequestError naming prompt',
                  {...request, prompt: ['ROMEO:', [27]]}, OpenAI.BadRequestError, 400, 'prompt');
await expectError('a list of bad elements raises BadRequestError naming prompt',
                  {...request, prompt: [[27], [1.5]]}, OpenAI.BadRequestError, 400, 'prompt');
await expectError('3 prompts x n 6 (18 choices) raises BadRequestError naming prompt',
                  {...request, prompt: ['a', 'b', 'c'], n: 6}, OpenAI.BadRequestError, 400,
                  'prompt');
await expectError('an empty prompt list raises BadRequestError naming prompt',
                  {...request, prompt: []}, OpenAI.BadRequestError, 400, 'prompt');
await expectError('echo + logprobs with a session raises BadRequestError naming session_id',
                  {...request, echo: true, logprobs: 1, session_id: 'conv-1'},
                  OpenAI.BadRequestError, 400, 'session_id');
await expectError('an unknown model raises NotFoundError',
                  {...request, model: 'no-such-model-here'}, OpenAI.NotFoundError, 404);

// --- chat.completions: the model's chat template makes the prompt ---

const CONV = [{role: 'system', content: 'A street in Verona.'},
              {role: 'user', content: 'Good morrow, fair maid.'}];
const chatRequest = {model, messages: CONV, max_tokens: MAX_TOKENS, temperature: 0};
let chatReference = null;

await test('chat.completions.create, non-streaming', async () => {
    const c = await client.chat.completions.create(chatRequest);
    check(c.object === 'chat.completion', `object = ${show(c.object)}, want "chat.completion"`);
    check(typeof c.id === 'string' && c.id.startsWith('chatcmpl-'), `id = ${show(c.id)}`);
    check(c._request_id === c.id, `x-request-id ${show(c._request_id)}, id ${show(c.id)}`);
    check(c.model === model, `model = ${show(c.model)}, want ${show(model)}`);
    check(Array.isArray(c.choices) && c.choices.length === 1,
          `want exactly one choice, got ${show(c.choices)}`);
    const ch = c.choices[0];
    check(ch.index === 0, `choices[0].index = ${show(ch.index)}`);
    check(ch.message?.role === 'assistant', `message.role = ${show(ch.message?.role)}`);
    check(typeof ch.message.content === 'string' && ch.message.content.length > 0,
          `message.content = ${show(ch.message.content)}`);
    check(ch.finish_reason === 'stop' || ch.finish_reason === 'length',
          `finish_reason = ${show(ch.finish_reason)}`);
    checkUsage(c.usage, 'chat non-streaming');
    chatReference = c;
});

await test('chat.completions.create, text parts give the same answer as a string', async () => {
    check(chatReference !== null, 'needs the non-streaming chat result, which failed');
    const parts = CONV.map((m) => ({role: m.role, content: [{type: 'text', text: m.content}]}));
    const c = await client.chat.completions.create({...chatRequest, messages: parts});
    check(c.choices[0].message.content === chatReference.choices[0].message.content,
          `${show(c.choices[0].message.content)} differs from ${show(
              chatReference.choices[0].message.content)}`);
});

await test('chat.completions.create, streaming: role, content, finish_reason, usage', async () => {
    check(chatReference !== null, 'needs the non-streaming chat result, which failed');
    const stream = await client.chat.completions.create(
        {...chatRequest, stream: true, stream_options: {include_usage: true}});
    let text = '', n = 0, role = null, finish = null, usage = null;
    for await (const chunk of stream) {
        check(chunk.object === 'chat.completion.chunk', `chunk object = ${show(chunk.object)}`);
        if (chunk.choices.length === 0) {
            check(finish !== null, 'the usage chunk came before finish_reason');
            usage = chunk.usage;
            continue;
        }
        const ch = chunk.choices[0];
        if (n++ === 0) {
            check(ch.delta.role === 'assistant', `first delta ${show(ch.delta)}, want the role`);
            role = ch.delta.role;
        } else {
            check(ch.delta.role === undefined, `delta ${show(ch.delta)} repeats the role`);
        }
        check(finish === null, 'a chunk after the one carrying finish_reason');
        text += ch.delta.content ?? '';
        finish = ch.finish_reason ?? null;
    }
    check(role === 'assistant', 'no role chunk');
    check(text === chatReference.choices[0].message.content,
          `streamed ${show(text)} differs from ${show(chatReference.choices[0].message.content)}`);
    check(finish === chatReference.choices[0].finish_reason, `finish_reason ${show(finish)}`);
    checkUsage(usage, 'chat streaming');
});

await test('chat.completions.create with logprobs and top_logprobs: 2', async () => {
    check(chatReference !== null, 'needs the non-streaming chat result, which failed');
    const c = await client.chat.completions.create({...chatRequest, logprobs: true,
                                                    top_logprobs: 2});
    const content = c.choices[0].logprobs?.content;
    check(Array.isArray(content) && content.length >= 1, `logprobs = ${show(c.choices[0].logprobs)}`);
    check(content.map((t) => t.token).join('') === c.choices[0].message.content ||
              c.choices[0].finish_reason === 'stop',
          'the tokens do not spell the answer');
    for (const t of content) {
        check(Number.isFinite(t.logprob) && t.logprob <= 1e-6, `logprob ${show(t.logprob)}`);
        check(Array.isArray(t.bytes), `bytes ${show(t.bytes)}`);
        check(t.top_logprobs.length === 2, `top_logprobs ${show(t.top_logprobs)}`);
        check(t.logprob >= Math.max(...t.top_logprobs.map((a) => a.logprob)) - 1e-4,
              `greedy token ${show(t.token)} is not the most likely of ${show(t.top_logprobs)}`);
    }
});

await test('logit_bias: +100 forces a token in chat and completions, -100 bans it', async () => {
    check(chatReference !== null, 'needs the non-streaming chat result, which failed');
    // " the" is one token of the served vocabulary (asked of the server, not assumed).
    const tok = await (await fetch(base.replace(/\/+$/, '') + '/v1/tokenize', {
        method: 'POST', headers: {'Content-Type': 'application/json'},
        body: JSON.stringify({prompt: ' the'})})).json();
    check(tok.tokens?.length === 1, `" the" is ${show(tok.tokens)}`);
    const id = String(tok.tokens[0]);
    const c = await client.chat.completions.create(
        {...chatRequest, max_tokens: 4, temperature: 0.9, seed: 1, logit_bias: {[id]: 100}});
    check(c.choices[0].message.content === ' the'.repeat(4),
          `forced answer ${show(c.choices[0].message.content)}`);
    const t = await client.completions.create(
        {...request, max_tokens: 4, logit_bias: {[id]: 100}});
    check(t.choices[0].text === ' the'.repeat(4), `forced text ${show(t.choices[0].text)}`);
    const b = await client.chat.completions.create(
        {...chatRequest, logprobs: true, logit_bias: {[id]: -100}});
    check(b.choices[0].logprobs.content.every((e) => e.token !== ' the'),
          `a banned token was generated: ${show(b.choices[0].message.content)}`);
});

await test('n: 3 choices (chat and completions, plain and streaming)', async () => {
    check(chatReference !== null, 'needs the non-streaming chat result, which failed');
    // Greedy: every choice is the n = 1 answer.
    const c = await client.chat.completions.create({...chatRequest, n: 3});
    check(c.choices.length === 3, `want 3 choices, got ${show(c.choices)}`);
    c.choices.forEach((ch, i) => {
        check(ch.index === i, `choices[${i}].index = ${show(ch.index)}`);
        check(ch.message.content === chatReference.choices[0].message.content,
              `choice ${i}: ${show(ch.message.content)}, want the n = 1 answer`);
    });
    check(c.usage.completion_tokens === 3 * chatReference.usage.completion_tokens,
          `completion_tokens ${c.usage.completion_tokens}, want 3 x the n = 1 answer's`);
    const t = await client.completions.create({...request, n: 2});
    check(t.choices.length === 2 && t.choices[0].text === t.choices[1].text,
          `greedy completions choices differ: ${show(t.choices)}`);
    // Streaming: each index gets its text and its own finish_reason.
    const stream = await client.chat.completions.create({...chatRequest, n: 3, stream: true});
    const texts = ['', '', ''], fins = [null, null, null];
    for await (const chunk of stream) {
        for (const ch of chunk.choices) {
            texts[ch.index] += ch.delta?.content ?? '';
            if (ch.finish_reason) fins[ch.index] = ch.finish_reason;
        }
    }
    texts.forEach((x, i) => check(x === chatReference.choices[0].message.content,
                                  `streamed choice ${i}: ${show(x)}`));
    check(fins.every((f) => f === chatReference.choices[0].finish_reason),
          `finish reasons ${show(fins)}`);
});

async function expectChatError(name, params, param) {
    await test(name, async () => {
        let err = null;
        try {
            await client.chat.completions.create({...chatRequest, ...params});
        } catch (e) {
            err = e;
        }
        check(err !== null, 'the request succeeded');
        check(err instanceof OpenAI.BadRequestError,
              `raised ${err?.constructor?.name} (status ${err?.status}), want BadRequestError`);
        check(err.param === param, `error.param = ${show(err.param)}, want ${show(param)}`);
    });
}

await expectChatError('chat with tools raises BadRequestError naming tools',
                      {tools: [{type: 'function', function: {name: 'f', parameters: {}}}]},
                      'tools');
await expectChatError('chat with an image part raises BadRequestError naming it',
                      {messages: [{role: 'user', content: [
                          {type: 'image_url', image_url: {url: 'https://example.com/a.png'}}]}]},
                      'messages[0].content[0]');
await expectChatError('chat with response_format json_object raises BadRequestError',
                      {response_format: {type: 'json_object'}}, 'response_format');
await expectChatError('chat with logit_bias outside the vocabulary raises BadRequestError',
                      {logit_bias: {'99999999': 5}}, 'logit_bias');
await expectChatError('chat with n over 16 raises BadRequestError naming n', {n: 17}, 'n');

// A permanent refusal must come with a status the SDK does not retry (it retries 408, 409,
// 429 and 5xx): with its default retries, one call is one request. The server this runs
// against has no adapter_dir, so an adapter upload is refused (403 uploads_disabled).
await test('a permanent refusal is not retried by the client (one request, no Retry-After)',
           async () => {
    const retrying = new OpenAI({baseURL: base.replace(/\/+$/, '') + '/v1', apiKey: 'unused',
                                 timeout: 60 * 1000}); // default maxRetries (2)
    const metric = async () => {
        const text = await (await fetch(base.replace(/\/+$/, '') + '/metrics')).text();
        const line = 'yunmin_http_requests_total{route="/v1/adapters/{name}",status="403"} ';
        const m = text.split('\n').find((l) => l.startsWith(line));
        return m ? Number(m.slice(line.length)) : 0;
    };
    const before = await metric();
    let err = null;
    try {
        await retrying.put('/adapters/sdk-probe', {body: {probe: 'x'.repeat(1 << 20)}});
    } catch (e) {
        err = e;
    }
    check(err instanceof OpenAI.PermissionDeniedError,
          `raised ${err?.constructor?.name} (status ${err?.status}), want PermissionDeniedError`);
    check(err.error?.code === 'uploads_disabled' || err.code === 'uploads_disabled',
          `code ${show(err.code)}, want uploads_disabled`);
    check(err.headers?.['retry-after'] === undefined,
          `Retry-After: ${show(err.headers?.['retry-after'])} on a permanent refusal`);
    // The server counts a request once its answer is sent: allow it a moment.
    let after = await metric();
    for (let i = 0; i < 40 && after === before; i++) {
        await new Promise((r) => setTimeout(r, 50));
        after = await metric();
    }
    check(after - before === 1, `${after - before} requests reached the server, want 1`);
});

if (failures > 0) {
    console.log(`${failures} check(s) failed against ${base}`);
    process.exit(1);
}
console.log(`all checks passed against ${base} (model ${model})`);
