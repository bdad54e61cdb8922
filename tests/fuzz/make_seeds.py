#!/usr/bin/env python3
"""Writes the seed corpora of tests/fuzz/corpus/ (run once; the output is committed).
Usage: tests/fuzz/make_seeds.py [SHARED_DIR]   (default: ../shared next to the repository)."""
import json, os, struct, sys

here = os.path.dirname(os.path.abspath(__file__))
shared = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, '..', '..', '..', 'shared')
data = os.path.join(shared, 'testdata')
out = os.path.join(here, 'corpus')


def put(target, name, content):
    os.makedirs(os.path.join(out, target), exist_ok=True)
    if isinstance(content, str):
        content = content.encode()
    with open(os.path.join(out, target, name), 'wb') as f:
        f.write(content)


def safetensors(header, payload=b''):
    h = json.dumps(header).encode()
    return struct.pack('<Q', len(h)) + h + payload


# safetensors_header: small valid files, edge cases, and real headers (data cut off).
put('safetensors_header', 'one_f32', safetensors(
    {'w': {'dtype': 'F32', 'shape': [2, 2], 'data_offsets': [0, 16]}}, bytes(16)))
put('safetensors_header', 'mixed', safetensors({
    '__metadata__': {'format': 'pt'},
    'a': {'dtype': 'BF16', 'shape': [3], 'data_offsets': [0, 6]},
    'b': {'dtype': 'F8_E4M3', 'shape': [2, 3], 'data_offsets': [6, 12]},
    'c': {'dtype': 'I64', 'shape': [], 'data_offsets': [12, 20]},
    'd': {'dtype': 'U8', 'shape': [0], 'data_offsets': [20, 20]}}, bytes(20)))
put('safetensors_header', 'misaligned', safetensors(
    {'x': {'dtype': 'F16', 'shape': [1], 'data_offsets': [1, 3]}}, bytes(3)))
put('safetensors_header', 'overlap', safetensors({
    'a': {'dtype': 'U8', 'shape': [4], 'data_offsets': [0, 4]},
    'b': {'dtype': 'U8', 'shape': [4], 'data_offsets': [2, 6]}}, bytes(6)))
put('safetensors_header', 'empty_header', safetensors({}))
put('safetensors_header', 'short', b'\x05\x00\x00')
put('safetensors_header', 'huge_length', struct.pack('<Q', 1 << 63) + b'{}')
for model, f in [('v2lite-tiny', 'model.safetensors'), ('v3-tiny', 'model-00002-of-00002.safetensors')]:
    with open(os.path.join(data, 'models', model, f), 'rb') as fh:
        n = struct.unpack('<Q', fh.read(8))[0]
        header = json.loads(fh.read(n))
    # Keep the first few tensors and rebase them onto a small payload.
    small, offset = {}, 0
    for name in sorted(k for k in header if k != '__metadata__')[:6]:
        t = dict(header[name])
        size = t['data_offsets'][1] - t['data_offsets'][0]
        size = min(size, 64)
        t['shape'] = [size // {'F32': 4, 'BF16': 2, 'F16': 2}.get(t['dtype'], 1)]
        nbytes = t['shape'][0] * {'F32': 4, 'BF16': 2, 'F16': 2}.get(t['dtype'], 1)
        t['data_offsets'] = [offset, offset + nbytes]
        offset += nbytes
        small[name] = t
    put('safetensors_header', model + '_subset', safetensors(small, bytes(offset)))

# safetensors_index
with open(os.path.join(data, 'models', 'v3-tiny', 'model.safetensors.index.json')) as fh:
    index = json.load(fh)
wm = dict(list(index['weight_map'].items())[:8])
put('safetensors_index', 'v3_tiny_subset', json.dumps({'metadata': index['metadata'], 'weight_map': wm}, indent=2))
put('safetensors_index', 'bad_name', '{"weight_map": {"a": "../x.safetensors", "b": 3}}')
put('safetensors_index', 'no_map', '{"metadata": {}}')
put('safetensors_index', 'empty', '{"weight_map": {}}')

# config
for name in ['deepseek-v2-lite.json', 'deepseek-v3.json', 'qwen2.5-72b.json']:
    with open(os.path.join(data, 'configs', name)) as fh:
        put('config', name, fh.read())
for model in ['v2lite-tiny', 'v3-tiny']:
    with open(os.path.join(data, 'models', model, 'config.json')) as fh:
        put('config', model + '.json', fh.read())
put('config', 'minimal_bad', '{"model_type": "deepseek_v3", "vocab_size": -1}')

# tokenizer_encode
tok = os.path.join(data, 'tokenizer', 'deepseek_v3')
with open(os.path.join(tok, 'encode_cases.jsonl')) as fh:
    cases = [json.loads(l) for l in fh if l.strip()]
by_category = {}
for c in cases:
    by_category.setdefault(c.get('category', ''), []).append(c)
i = 0
for category, cs in sorted(by_category.items()):
    for c in cs[:3]:
        put('tokenizer_encode', 'case%02d_%s' % (i, category or 'none'), c['text'])
        i += 1
put('tokenizer_encode', 'invalid_utf8', b'ab\xff\xfecd\xc3')
put('tokenizer_encode', 'special', '<｜begin▁of▁sentence｜><｜User｜>Hi<｜Assistant｜>')
put('tokenizer_encode', 'spaces', ' ' * 40 + '\n\n\t x')

# tokenizer_decode: flags byte, then little-endian int32 ids
def ids(flags, values):
    return bytes([flags]) + b''.join(struct.pack('<i', v) for v in values)
with open(os.path.join(tok, 'decode_cases.jsonl')) as fh:
    dcases = [json.loads(l) for l in fh if l.strip()]
for i, c in enumerate(dcases[:8]):
    put('tokenizer_decode', 'case%02d' % i, ids(0, c['ids']))
put('tokenizer_decode', 'special_skipped', ids(1, [0, 128803, 19923, 3, 128804, 1]))
put('tokenizer_decode', 'out_of_range', ids(2, [5, -1, 1 << 30, 129279]))
put('tokenizer_decode', 'split_utf8', ids(0, [223, 223, 1]))

# chat_template: flags byte (bit 0 add_generation_prompt, bit 1 the real template), then either
# template NUL messages, or messages for the real template.
with open(os.path.join(tok, 'tokenizer_config.json')) as fh:
    real = json.load(fh)['chat_template']
with open(os.path.join(tok, 'chat_cases.jsonl')) as fh:
    chats = [json.loads(l) for l in fh if l.strip()]
for i, c in enumerate(chats):
    put('chat_template', 'real%02d_%s' % (i, c['name']),
        bytes([2 | int(c['add_generation_prompt'])]) + json.dumps(c['messages'], ensure_ascii=False).encode())
put('chat_template', 'real_template_inline',
    b'\x01' + real.encode() + b'\x00' + json.dumps(chats[0]['messages']).encode())
simple = [
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] | trim }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}",
    "{%- set ns = namespace(n=0) -%}{% for m in messages %}{% set ns.n = ns.n + 1 %}{{ loop.index }}/{{ loop.length }}:{{ m.content.split(' ')[-1] }}{% endfor %}{{ ns.n }}",
    "{% macro f(x, y=2) %}{{ x * y }}{% endmacro %}{{ f(3) }}{{ f('ab', 3) }}{{ range(5) | list | join(',') }}",
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}{{ bos_token }}",
    "{{ messages | tojson }}{{ {'a': [1, 2.5, none, true]} | tojson(indent=2) }}{{ 'x' ~ 1 ~ none }}",
    "{% for i in range(3) %}{% for j in range(i) %}{{ i }}{{ j }}{% if j > 0 %}{% break %}{% endif %}{% endfor %}{% endfor %}",
    "{{ messages[0].content[1:3] }}{{ messages[0].content[::-1] }}{{ 'abc'.upper() }}{{ (1, 2) }}{{ 7 // 2 }}{{ 2 ** 10 }}",
]
msgs = json.dumps([{'role': 'user', 'content': 'hello big world'}, {'role': 'assistant', 'content': 'ok'}]).encode()
for i, t in enumerate(simple):
    put('chat_template', 'tmpl%02d' % i, b'\x01' + t.encode() + b'\x00' + msgs)
