"""Record llama.cpp's built-in chat templates and its Gemma tokenization for tests/test_serve.py.

    python tests/tools/llamacpp_chat_templates.py GEMMA_GGUF tests/fixtures/llamacpp_chat_templates.json

Needs llama-cpp-python (`llama_chat_apply_template` renders llama.cpp's built-in templates by name).
"""
import ctypes
import json
import sys

import llama_cpp

# The conversations the tests render (keep in sync with tests/test_serve.py).
CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Capital of France?"}]
GEMMA_CHAT = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
TEMPLATES = ("gemma", "chatml", "llama3", "llama2-sys-bos")


def render(name, msgs):
    arr = (llama_cpp.llama_chat_message * len(msgs))()
    keep = []
    for i, m in enumerate(msgs):
        role, content = m["role"].encode(), m["content"].encode()
        keep += [role, content]
        arr[i].role, arr[i].content = role, content
    buf = ctypes.create_string_buffer(1 << 16)
    n = llama_cpp.llama_chat_apply_template(name.encode(), arr, len(msgs), True, buf, len(buf))
    assert 0 < n < len(buf)
    return buf.raw[:n].decode()


def main():
    out = {"llama_cpp_version": llama_cpp.__version__, "conversation": CONVERSATION,
           "templates": {name: render(name, CONVERSATION) for name in TEMPLATES},
           "gemma_chat": {"messages": GEMMA_CHAT, "text": render("gemma", GEMMA_CHAT)}}
    ref = llama_cpp.Llama(sys.argv[1], vocab_only=True, verbose=False)
    out["gemma_chat"]["ids"] = ref.tokenize(out["gemma_chat"]["text"].encode(), add_bos=True, special=True)
    with open(sys.argv[2], "w") as f:       # llama.cpp prints to stdout itself: write to a file
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
