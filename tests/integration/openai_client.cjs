// Drives `dsv3 serve` with the official `openai` npm package, for tests/integration/server_test.cc.
// Usage: node openai_client.cjs BASE_URL SCENARIO [JSON_ARGS]; prints one JSON object on stdout.
// The package is found through NODE_PATH (installed by the test outside the source tree).
'use strict';
const OpenAI = require('openai');

const [base, scenario, argText] = process.argv.slice(2);
const args = argText ? JSON.parse(argText) : {};
const client = new OpenAI({ baseURL: base + '/v1', apiKey: 'unused', maxRetries: 0, timeout: 120000 });
const model = args.model || 'tiny';

async function chatStream(messages, maxTokens) {
  const stream = await client.chat.completions.create({
    model, messages, max_tokens: maxTokens, temperature: 0, stream: true,
    stream_options: { include_usage: true },
  });
  let content = '', reasoning = '', finish = null, usage = null, role = null, chunks = 0;
  for await (const chunk of stream) {
    ++chunks;
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      if (c.delta.role) role = c.delta.role;
      if (c.delta.content) content += c.delta.content;
      if (c.delta.reasoning_content) reasoning += c.delta.reasoning_content;
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  return { content, reasoning, finish, usage, role, chunks };
}

async function completionStream(prompt, maxTokens) {
  const stream = await client.completions.create({
    model, prompt, max_tokens: maxTokens, temperature: 0, stream: true,
    stream_options: { include_usage: true },
  });
  let text = '', finish = null, usage = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      text += c.text;
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  return { text, finish, usage };
}

async function metrics() {
  const text = await (await fetch(base + '/metrics')).text();
  const out = {};
  for (const line of text.split('\n')) {
    const m = line.match(/^([a-z0-9_]+)(\{[^}]*\})? ([0-9.eE+-]+)$/);
    if (m) out[m[1] + (m[2] || '')] = Number(m[3]);
  }
  return out;
}

const scenarios = {
  // Chat and completions, streaming and not, and the model list.
  async basic() {
    const user = [{ role: 'user', content: args.prompt }];
    const chat = await client.chat.completions.create({
      model, messages: user, max_tokens: args.n, temperature: 0,
    });
    const chatStreamed = await chatStream(user, args.n);
    const completion = await client.completions.create({
      model, prompt: args.prompt, max_tokens: args.n, temperature: 0,
    });
    const completionStreamed = await completionStream(args.prompt, args.n);
    const models = await client.models.list();
    // A second completion that continues the first: its prompt starts with a cached prefix.
    const next = await client.completions.create({
      model, prompt: args.prompt + completion.choices[0].text + args.more, max_tokens: args.n,
      temperature: 0,
    });
    return {
      chat: { content: chat.choices[0].message.content, finish: chat.choices[0].finish_reason,
              usage: chat.usage, object: chat.object, role: chat.choices[0].message.role,
              reasoning: chat.choices[0].message.reasoning_content ?? null },
      chat_stream: chatStreamed,
      completion: { text: completion.choices[0].text, finish: completion.choices[0].finish_reason,
                    usage: completion.usage, object: completion.object },
      completion_stream: completionStreamed,
      next: { prompt: args.prompt + completion.choices[0].text + args.more,
              text: next.choices[0].text, usage: next.usage },
      models: models.data.map((m) => m.id),
    };
  },
  // Many concurrent streaming chats with different prompts, then each prompt alone.
  async load() {
    const results = await Promise.allSettled(args.prompts.map(
        (p) => chatStream([{ role: 'user', content: p }], args.n)));
    const m = await metrics();
    const alone = [];
    for (const p of args.prompts) alone.push((await chatStream([{ role: 'user', content: p }], args.n)).content);
    return {
      results: results.map((r) => r.status === 'fulfilled' ? r.value : { error: String(r.reason) }),
      metrics: m,
      alone,
    };
  },
  // Reads a few chunks of a long stream, then hangs up; waits until the slot is free again and
  // checks that the server still answers.
  async disconnect() {
    const stream = await client.chat.completions.create({
      model, messages: [{ role: 'user', content: args.prompt }], max_tokens: args.n,
      temperature: 0, stream: true,
    });
    let chunks = 0;
    for await (const chunk of stream) {
      if (++chunks === 3) break;  // leaving the loop aborts the request
    }
    let m = await metrics();
    for (let i = 0; i < 600 && (m.dsv3_kv_slots_in_use > 0 || m.dsv3_requests_cancelled_total < 1); ++i) {
      await new Promise((r) => setTimeout(r, 50));
      m = await metrics();
    }
    const after = await client.chat.completions.create({
      model, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 4, temperature: 0,
    });
    return { chunks, metrics: m, metrics_after: await metrics(),
             after: after.choices[0].message.content, after_finish: after.choices[0].finish_reason };
  },
  // Error responses as the SDK sees them.
  async errors() {
    const out = {};
    const tries = {
      unknown_model: () => client.chat.completions.create({
        model: 'no-such-model', messages: [{ role: 'user', content: 'x' }] }),
      too_many_tokens: () => client.chat.completions.create({
        model, messages: [{ role: 'user', content: 'x' }], max_tokens: 1 << 20 }),
      empty_messages: () => client.chat.completions.create({ model, messages: [] }),
    };
    for (const [name, f] of Object.entries(tries)) {
      try {
        await f();
        out[name] = { status: 200 };
      } catch (e) {
        out[name] = { status: e.status, code: e.code ?? null, param: e.param ?? null,
                      type: e.type ?? null, message: e.message };
      }
    }
    return out;
  },
  // logit_bias +100 on one token: greedy output is that token every time.
  async bias() {
    const r = await client.completions.create({
      model, prompt: args.prompt, max_tokens: args.n, temperature: 0,
      logit_bias: { [String(args.token)]: 100 }, frequency_penalty: 0, presence_penalty: 0,
    });
    return { text: r.choices[0].text, tokens: r.usage.completion_tokens };
  },
  // Log-probabilities, greedy: chat (top 2) without and with streaming, completions (top 3).
  async logprobs() {
    const messages = [{ role: 'user', content: args.prompt }];
    const base = { model, messages, max_tokens: args.n, temperature: 0 };
    const chat = await client.chat.completions.create({ ...base, logprobs: true, top_logprobs: 2 });
    const stream = await client.chat.completions.create({
      ...base, logprobs: true, top_logprobs: 2, stream: true, stream_options: { include_usage: true },
    });
    const streamed = { text: '', logprobs: [], tokens: null };
    for await (const c of stream) {
      if (c.usage) streamed.tokens = c.usage.completion_tokens;
      for (const ch of c.choices) {
        if (ch.logprobs) streamed.logprobs.push(...ch.logprobs.content);
        if (ch.delta && ch.delta.content) streamed.text += ch.delta.content;
      }
    }
    const comp = await client.completions.create({
      model, prompt: args.prompt, max_tokens: args.n, temperature: 0, logprobs: 3,
    });
    return {
      chat: {
        text: chat.choices[0].message.content, logprobs: chat.choices[0].logprobs.content,
        tokens: chat.usage.completion_tokens,
      },
      stream: streamed,
      completion: {
        text: comp.choices[0].text, logprobs: comp.choices[0].logprobs,
        tokens: comp.usage.completion_tokens,
      },
    };
  },
  // response_format (json_object, or args.response_format): 100 sampled answers (4 at a time),
  // and 4 streamed.
  async json() {
    const messages = [{ role: 'user', content: args.prompt }];
    const ask = (seed, stream) => client.chat.completions.create({
      model, messages, max_tokens: args.n, temperature: 1, seed, stream,
      response_format: args.response_format || { type: 'json_object' },
    });
    const answers = [];
    for (let i = 0; i < 100; i += 4) {
      const batch = await Promise.all([0, 1, 2, 3].map((k) => ask(i + k, false)));
      for (const r of batch) {
        answers.push({ text: r.choices[0].message.content, finish: r.choices[0].finish_reason });
      }
    }
    const streamed = [];
    for (let i = 0; i < 4; ++i) {
      let text = '';
      let finish = null;
      for await (const c of await ask(1000 + i, true)) {
        for (const ch of c.choices) {
          text += ch.delta.content || '';
          if (ch.finish_reason) finish = ch.finish_reason;
        }
      }
      streamed.push({ text, finish });
    }
    return { answers, streamed };
  },
  // n choices: greedy (all equal to n = 1's answer) and sampled, chat streamed and completions.
  async choices() {
    const messages = [{ role: 'user', content: args.prompt }];
    const one = await client.completions.create({
      model, prompt: args.prompt, max_tokens: args.n, temperature: 0,
    });
    const greedy = await client.completions.create({
      model, prompt: args.prompt, max_tokens: args.n, temperature: 0, n: 3,
    });
    const sampled = await client.completions.create({
      model, prompt: args.prompt, max_tokens: args.n, temperature: 1, seed: 3, n: 3,
    });
    const stream = await client.chat.completions.create({
      model, messages, max_tokens: args.n, temperature: 1, seed: 3, n: 2, stream: true,
      stream_options: { include_usage: true },
    });
    const streamed = { texts: {}, finish: {}, tokens: null };
    for await (const c of stream) {
      if (c.usage) streamed.tokens = c.usage.completion_tokens;
      for (const ch of c.choices) {
        streamed.texts[ch.index] = (streamed.texts[ch.index] || '') + (ch.delta.content || '');
        if (ch.finish_reason) streamed.finish[ch.index] = ch.finish_reason;
      }
    }
    const chat = await client.chat.completions.create({
      model, messages, max_tokens: args.n, temperature: 1, seed: 3, n: 2,
    });
    const texts = (r) => r.choices.map((c) => [c.index, c.text ?? c.message.content]);
    return {
      one: one.choices[0].text, greedy: texts(greedy), sampled: texts(sampled),
      usage: sampled.usage, streamed, chat: texts(chat),
    };
  },
  // Fields the server does not implement, as the SDK sends them: each must be refused.
  async unsupported() {
    const out = {};
    const messages = [{ role: 'user', content: 'x' }];
    const tries = {
      modalities: { modalities: ['text', 'audio'] },
      audio: { audio: { voice: 'alloy', format: 'mp3' } },
      prediction: { prediction: { type: 'content', content: 'x' } },
      schema: {
        response_format: {
          type: 'json_schema',
          json_schema: { name: 's', schema: { type: 'object', properties: { x: { type: 'string', pattern: 'a+' } } } },
        },
      },
      tool_parameters: { tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'string' } } }] },
    };
    for (const [name, extra] of Object.entries(tries)) {
      try {
        await client.chat.completions.create({ model, messages, max_tokens: 2, ...extra });
        out[name] = { status: 200 };
      } catch (e) {
        out[name] = { status: e.status, code: e.code ?? null, param: e.param ?? null };
      }
    }
    return out;
  },
  // Tools: required, a named function, auto (pushed to call by a logit bias on the calls
  // marker), none, streamed calls, and a conversation carrying calls and their results.
  async tools() {
    const messages = [{ role: 'user', content: args.prompt }];
    const ask = (extra) => client.chat.completions.create({
      model, messages, max_tokens: args.n, temperature: 1, tools: args.tools, ...extra,
    });
    const answer = (r) => ({
      content: r.choices[0].message.content,
      calls: (r.choices[0].message.tool_calls || []).map((c) => ({
        id: c.id, type: c.type, name: c.function.name, arguments: c.function.arguments,
      })),
      finish: r.choices[0].finish_reason,
    });
    const out = { required: [], named: [], streamed: [] };
    for (let i = 0; i < 8; ++i) out.required.push(answer(await ask({ seed: i, tool_choice: 'required' })));
    for (let i = 0; i < 4; ++i) {
      out.named.push(answer(await ask({
        seed: i, tool_choice: { type: 'function', function: { name: args.tools[1].function.name } },
      })));
    }
    const bias = { [args.marker]: 100 };
    out.auto = answer(await ask({ seed: 1, logit_bias: bias, parallel_tool_calls: false }));
    out.none = answer(await ask({ seed: 1, logit_bias: bias, tool_choice: 'none' }));
    for (let i = 0; i < 3; ++i) {
      const calls = {};
      let content = '';
      let finish = null;
      for await (const c of await ask({ seed: 50 + i, tool_choice: 'required', stream: true })) {
        for (const ch of c.choices) {
          content += ch.delta.content || '';
          for (const t of ch.delta.tool_calls || []) {
            const k = calls[t.index] || (calls[t.index] = { id: '', name: '', arguments: '' });
            if (t.id) k.id = t.id;
            if (t.function && t.function.name) k.name += t.function.name;
            if (t.function && t.function.arguments) k.arguments += t.function.arguments;
          }
          if (ch.finish_reason) finish = ch.finish_reason;
        }
      }
      out.streamed.push({ content, calls: Object.values(calls), finish });
    }
    const call = out.required[0].calls[0];
    const turn = await client.chat.completions.create({
      model, max_tokens: 4, temperature: 0, tools: args.tools,
      messages: [
        ...messages,
        { role: 'assistant', content: null, tool_calls: [{ id: call.id, type: 'function', function: { name: call.name, arguments: call.arguments } }] },
        { role: 'tool', tool_call_id: call.id, content: '{"ok": true}' },
      ],
    });
    out.turn = { finish: turn.choices[0].finish_reason, prompt_tokens: turn.usage.prompt_tokens };
    return out;
  },
};

scenarios[scenario]().then(
    (r) => { process.stdout.write(JSON.stringify(r) + '\n'); },
    (e) => { process.stderr.write(String(e && e.stack || e) + '\n'); process.exit(1); });
