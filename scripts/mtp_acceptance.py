#!/usr/bin/python3
"""MTP draft acceptance of a model on validation stories (standard library only).

For each of the first --stories stories of a TinyStories-style file (stories separated by
`<|endoftext|>` lines), the prompt is `<|endoftext|>` + newline + the story's first sentence;
`dsv3 generate --raw --json --draft 1` continues it up to the end of the story (EOS) or
--n-predict tokens, greedily and sampled at --temp (seed = story index). Drafts checked and
accepted are summed over all stories; tokens per main step is decoded tokens over main passes;
the same greedy run without drafts (--no-mtp) gives the speedup in decode tokens/s.
Writes one JSON object to -o and prints a line per mode.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile


def first_sentence(story):
    text = " ".join(story.split())
    for end in (". ", "! ", "? "):
        at = text.find(end)
        if 0 < at < 200:
            return text[: at + 1]
    return " ".join(text.split()[:12])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dsv3", default="build/dsv3")
    p.add_argument("-m", "--model", required=True)
    p.add_argument("--valid", required=True)
    p.add_argument("--stories", type=int, default=100)
    p.add_argument("--n-predict", type=int, default=256)
    p.add_argument("--temp", type=float, default=0.8)
    p.add_argument("-t", "--threads", type=int, default=1)
    p.add_argument("-o", "--output", required=True)
    a = p.parse_args()

    with open(a.valid, encoding="utf-8") as f:
        stories = [s.strip() for s in f.read().split("<|endoftext|>") if s.strip()]
    if len(stories) < a.stories:
        sys.exit(f"mtp_acceptance: {a.valid} has {len(stories)} stories, fewer than --stories {a.stories}")
    prompts = ["<|endoftext|>\n" + first_sentence(s) for s in stories[: a.stories]]

    result = {"model": a.model, "stories": a.stories, "n_predict": a.n_predict}
    modes = (("greedy", 0.0, True), (f"temp {a.temp:g}", a.temp, True), ("greedy, no MTP", 0.0, False))
    for mode, temp, mtp in modes:
        checked = accepted = new_tokens = decode_tokens = steps = 0
        decode_seconds = 0.0
        for i, prompt in enumerate(prompts):
            cmd = [a.dsv3, "generate", "-m", a.model, "--raw", "-p", prompt, "-n",
                   str(a.n_predict), "--temp", str(temp), "--seed", str(i), "--json", "-t", str(a.threads)]
            cmd += ["--draft", "1"] if mtp else ["--no-mtp"]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"mtp_acceptance: story {i}: {r.stderr.strip()}")
            j = json.loads(r.stdout)
            if mtp and "mtp" not in j:
                sys.exit(f"mtp_acceptance: {a.model} decodes without MTP drafts")
            if mtp:
                checked += j["mtp"]["drafts_checked"][0]
                accepted += j["mtp"]["drafts_accepted"][0]
            new_tokens += j["new_tokens"]
            decode_tokens += j["decode_tokens"]
            steps += j["decode_steps"]
            decode_seconds += j["decode_seconds"]
            print(f"\r{mode}: story {i + 1}/{len(prompts)}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        m = {
            "temperature": temp,
            "new_tokens": new_tokens,
            "drafts_checked": checked,
            "drafts_accepted": accepted,
            "acceptance": accepted / checked if checked else 0.0,
            "tokens_per_main_step": decode_tokens / steps if steps else 0.0,
            "decode_tokens_per_second": decode_tokens / decode_seconds if decode_seconds else 0.0,
        }
        result[mode] = m
        print(f"mtp_acceptance: {mode}: acceptance {100 * m['acceptance']:.1f}% "
              f"({accepted}/{checked} drafts), {m['tokens_per_main_step']:.2f} tokens per main "
              f"step, {new_tokens} tokens over {len(prompts)} stories, "
              f"{m['decode_tokens_per_second']:.1f} decode tokens/s")
    plain = result["greedy, no MTP"]["decode_tokens_per_second"]
    result["greedy_speedup"] = result["greedy"]["decode_tokens_per_second"] / plain if plain else 0.0
    print(f"mtp_acceptance: greedy decode with MTP drafts x{result['greedy_speedup']:.2f} "
          "the tokens/s without")
    directory = os.path.dirname(os.path.abspath(a.output))
    with tempfile.NamedTemporaryFile("w", dir=directory, delete=False, suffix=".tmp") as f:
        json.dump(result, f, indent=1)
    os.replace(f.name, a.output)


if __name__ == "__main__":
    main()
