#!/usr/bin/python3
"""tests/cli/test_chat_template_cli.py - `yunmin chat-template`: prompts, exit codes, errors.

Usage: test_chat_template_cli.py YUNMIN_EXE FIXTURE_DIR     (meson runs it as `cli-chat-template`)

Standard library only. The expected prompts are the Jinja2 renderings in
FIXTURE_DIR/chat_templates/ (made by tests/fixtures/make_chat_template_fixtures.py):
  - --template FILE with --bos-token/--eos-token over the fixture conversations, a sample of the
    public templates, against expected.json; add_generation_prompt on and off;
  - --model DIR (and the embedded default model when no --model is given) against
    shakespeare.json; a template's own tokens from tokenizer_config.json, overridden by flags;
  - a raise_exception(): exit 1, its message on one stderr line;
  - bad input (missing or malformed messages file, a template that does not parse, a model
    directory without a template, conflicting or unknown options): one line, exit 1 or 2.
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest

YUNMIN = None
FIXTURES = None


def run(args):
    env = dict(os.environ)
    env.pop("YUNMIN_MODEL", None)
    p = subprocess.run([YUNMIN, "chat-template"] + list(args), capture_output=True, env=env,
                       timeout=60)
    return p.returncode, p.stdout, p.stderr.decode("utf-8", "replace")


class ChatTemplateCli(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        ct = os.path.join(FIXTURES, "chat_templates")
        with open(os.path.join(ct, "expected.json"), encoding="utf-8") as f:
            cls.expected = json.load(f)["cases"]
        with open(os.path.join(ct, "MANIFEST.json"), encoding="utf-8") as f:
            cls.manifest = {t["file"]: t for t in json.load(f)["templates"]}
        with open(os.path.join(ct, "conversations.json"), encoding="utf-8") as f:
            cls.conversations = json.load(f)
        with open(os.path.join(ct, "shakespeare.json"), encoding="utf-8") as f:
            cls.shakespeare = json.load(f)["cases"]
        cls.templates = os.path.join(ct, "templates")
        cls.model = os.path.join(FIXTURES, "..", "..", "models", "shakespeare-mamba")
        cls.tmp = tempfile.TemporaryDirectory()

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def write(self, name, data):
        path = os.path.join(self.tmp.name, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(data if isinstance(data, str) else json.dumps(data, ensure_ascii=False))
        return path

    def assert_one_line_error(self, rc_want, args, mention=None):
        rc, out, err = run(args)
        self.assertEqual(rc, rc_want, f"{args}: {err}")
        self.assertEqual(out, b"")
        lines = err.splitlines()
        self.assertEqual(len(lines), 1, f"{args}: {err!r}")
        self.assertTrue(lines[0].startswith("yunmin: "), lines[0])
        if mention:
            self.assertIn(mention, lines[0])
        return lines[0]

    def test_templates_match_jinja2(self):
        files = ["chatml.jinja", "llama-3-8b-instruct.jinja", "gemma-7b-it.jinja",
                 "mistral-7b-instruct-v0.2.jinja", "zephyr-7b-beta.jinja", "qwen2.5-instruct.jinja",
                 "phi-3-mini-4k-instruct.jinja", "deepseek-llm-7b-chat.jinja"]
        n = 0
        for case in self.expected:
            if case["template"] not in files or "output" not in case or "tools" in case:
                continue
            t = self.manifest[case["template"]]
            msgs = self.write("m.json", self.conversations[case["conversation"]])
            args = ["--template", os.path.join(self.templates, t["file"]), "--messages", msgs]
            if t["bos_token"] is not None:
                args += ["--bos-token", t["bos_token"]]
            if t["eos_token"] is not None:
                args += ["--eos-token", t["eos_token"]]
            if case["add_generation_prompt"]:
                args.append("--add-generation-prompt")
            rc, out, err = run(args)
            self.assertEqual(rc, 0, f"{case['template']} {case['conversation']}: {err}")
            self.assertEqual(json.loads(out), {"prompt": case["output"]},
                             f"{case['template']} over {case['conversation']}")
            n += 1
        self.assertGreater(n, 50)

    def test_model_directory_and_default_model(self):
        for case in self.shakespeare:
            msgs = self.write("m.json", {"messages": case["messages"]})
            for model in (["--model", self.model], []):
                args = model + ["--messages", msgs]
                if case["add_generation_prompt"]:
                    args.append("--add-generation-prompt")
                rc, out, err = run(args)
                if "output" in case:
                    self.assertEqual(rc, 0, err)
                    self.assertEqual(json.loads(out)["prompt"], case["output"])
                else:
                    self.assertEqual(rc, 1)
                    self.assertIn(case["error"]["message"], err)

    def test_tokens_from_config_and_flags(self):
        d = os.path.join(self.tmp.name, "model")
        os.makedirs(d, exist_ok=True)
        self.write("model/tokenizer_config.json", {
            "bos_token": {"content": "<B>"}, "eos_token": "<E>",
            "chat_template": "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}"})
        msgs = self.write("m.json", [{"role": "user", "content": "x\u0000y \"é\""}])
        rc, out, err = run(["--model", d, "--messages", msgs])
        self.assertEqual(rc, 0, err)
        self.assertEqual(json.loads(out), {"prompt": "<B>x\u0000y \"é\"<E>"})
        rc, out, err = run(["--model", d, "--messages", msgs, "--bos-token", "[", "--eos-token", "]"])
        self.assertEqual(json.loads(out), {"prompt": "[x\u0000y \"é\"]"})

    def test_raise_exception_exits_1_with_its_message(self):
        msgs = self.write("m.json", [{"role": "user", "content": "one"},
                                     {"role": "user", "content": "two"}])
        line = self.assert_one_line_error(1, ["--template", os.path.join(self.templates, "gemma-7b-it.jinja"),
                                              "--messages", msgs])
        self.assertTrue(line.endswith("Conversation roles must alternate user/assistant/user/assistant/..."), line)
        t = self.write("multi.jinja", "{{ raise_exception('two\\nlines') }}")
        line = self.assert_one_line_error(1, ["--template", t, "--messages", msgs])
        self.assertTrue(line.endswith("two lines"), line)

    def test_bad_input(self):
        msgs = self.write("m.json", [{"role": "user", "content": "hi"}])
        chatml = os.path.join(self.templates, "chatml.jinja")
        self.assert_one_line_error(2, ["--template", chatml], "--messages")
        self.assert_one_line_error(2, ["--model", self.model, "--template", chatml, "--messages", msgs])
        self.assert_one_line_error(2, ["--messages", msgs, "--frobnicate"], "--frobnicate")
        self.assert_one_line_error(2, ["--messages", msgs, "extra"], "extra")
        self.assert_one_line_error(1, ["--template", chatml, "--messages", os.path.join(self.tmp.name, "none.json")])
        self.assert_one_line_error(1, ["--template", chatml, "--messages", self.write("bad.json", "[{")], "invalid JSON")
        self.assert_one_line_error(1, ["--template", chatml, "--messages", self.write("obj.json", {"x": 1})])
        self.assert_one_line_error(1, ["--template", self.write("bad.jinja", "a\n{% for m in messages %}"),
                                       "--messages", msgs], "line 2")
        self.assert_one_line_error(1, ["--template", self.write("f.jinja", "{{ x|nosuch }}"),
                                       "--messages", msgs], "unknown filter 'nosuch'")
        self.assert_one_line_error(1, ["--template", self.write("u.jinja", "{{ x.y }}"),
                                       "--messages", msgs], "'x' is undefined")
        empty = os.path.join(self.tmp.name, "empty")
        os.makedirs(empty, exist_ok=True)
        self.assert_one_line_error(1, ["--model", empty, "--messages", msgs], "no chat template")
        self.assert_one_line_error(1, ["--model", os.path.join(self.tmp.name, "missing"), "--messages", msgs])
        rc, out, err = run(["--help"])
        self.assertEqual(rc, 0)
        self.assertIn(b"usage: yunmin chat-template", out)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: test_chat_template_cli.py YUNMIN_EXE FIXTURE_DIR [unittest args]")
    YUNMIN = os.path.abspath(sys.argv[1])
    FIXTURES = os.path.abspath(sys.argv[2])
    unittest.main(argv=[sys.argv[0]] + sys.argv[3:], verbosity=2)
