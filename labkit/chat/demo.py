"""A standalone web demo: chat with a checkpoint in the browser (gradio).

::

    pip install -r requirements/demo.txt        # gradio is optional: the notebooks do not need it
    labkit demo models/tiny            # then open http://127.0.0.1:7860

The page uses the same engines as the notebooks (:func:`labkit.chat.engine.make_engine` picks LMDeploy
on a GPU that has it, transformers otherwise) and the same template, so the answers match the
chat cell's. It listens on 127.0.0.1 only, unless you pass ``--host``.

The page's work is done by :class:`DemoHandlers`, plain methods on plain values (question,
picture, history), which tests call without gradio; :func:`build_demo` only wires them to
widgets.
"""
from __future__ import annotations

import argparse
import html
import os
import sys

from labkit.chat.inputs import ChatInputError, Sampling, check_question, display_question, place_image


def _import_gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # the course runs offline
    try:
        import gradio
    except ImportError:
        raise ImportError(
            "The web demo needs gradio, an optional extra: pip install -r requirements/demo.txt "
            "(in a notebook, use labkit.chat.widget.ChatCell instead)."
        ) from None
    return gradio


def chat_messages(history) -> list[dict]:
    """History turns as the chat window shows them: role/content dicts, picture marker removed."""
    messages = []
    for question, answer in history:
        messages += [{"role": "user", "content": display_question(question)},
                     {"role": "assistant", "content": answer}]
    return messages


class DemoHandlers:
    """What the page's buttons do. ``history`` is a list of (question, answer) turns kept per visitor."""

    def __init__(self, engine):
        self.engine = engine

    def respond(self, question, image, history, temperature, top_p, max_tokens, show_prompt=False):
        """Stream an answer. Yields (chat messages, history, question box, error text, prompt text)."""
        history = list(history or [])
        try:
            placed = place_image(check_question(question), image is not None, history)
            settings = Sampling(int(max_tokens), float(temperature), float(top_p))
            prompt = self.engine.prompt(question, image, history) if show_prompt else ""
            pieces = self.engine.stream(question, image, history, settings)
        except ChatInputError as err:
            yield chat_messages(history), history, question, f"⚠️ {err}", ""
            return
        answer = ""
        shown = chat_messages(history) + [{"role": "user", "content": display_question(placed)}]
        try:
            for piece in pieces:
                answer += piece
                yield shown + [{"role": "assistant", "content": answer}], history, "", "", prompt
        except Exception as err:  # the page stays alive; the visitor reads what went wrong
            yield chat_messages(history), history, question, f"⚠️ The model failed: {err}", prompt
            return
        history = history + [(placed, answer)]
        yield chat_messages(history), history, "", "", prompt

    def new_image(self, image, history):
        """A new picture (or none): a new conversation. Returns (chat messages, history, note)."""
        if history:
            return [], [], "New picture, so a new conversation starts."
        return chat_messages(history or []), list(history or []), ""

    def clear(self):
        """Forget the conversation (the picture stays). Returns (chat messages, history, error, prompt)."""
        return [], [], "", ""


def build_demo(engine, title="InternVL2 chat"):
    """The gradio page (a ``gr.Blocks``); call ``.launch()`` on it."""
    gr = _import_gradio()
    handlers = DemoHandlers(engine)
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(f"## {html.escape(title)}\n<small>{html.escape(engine.description)}</small>")
        history = gr.State([])
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(type="pil", label="Picture", sources=["upload", "clipboard"])
                temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="temperature (0 = greedy)")
                top_p = gr.Slider(0.05, 1.0, value=0.8, step=0.05, label="top_p")
                max_tokens = gr.Slider(1, 1024, value=256, step=1, label="max new tokens")
                show_prompt = gr.Checkbox(False, label="show the exact prompt")
            with gr.Column(scale=2):
                chat = gr.Chatbot(type="messages", label="Conversation", height=420, allow_tags=False)
                error = gr.Markdown()
                question = gr.Textbox(label="Question", placeholder="这是什么菜？", lines=2)
                with gr.Row():
                    send = gr.Button("Send", variant="primary")
                    clear = gr.Button("Clear")
                prompt = gr.Textbox(label="Prompt the model read", lines=6, interactive=False)
        inputs = [question, image, history, temperature, top_p, max_tokens, show_prompt]
        outputs = [chat, history, question, error, prompt]
        send.click(handlers.respond, inputs, outputs, api_name="respond")
        question.submit(handlers.respond, inputs, outputs)
        image.change(handlers.new_image, [image, history], [chat, history, error])
        clear.click(handlers.clear, None, [chat, history, error, prompt])
    return demo


def main(argv=None):
    parser = argparse.ArgumentParser(prog="labkit demo", description="Chat with a checkpoint in the browser.")
    parser.add_argument("model_dir", help="an official-format checkpoint folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--backend", default="auto", choices=["auto", "transformers", "lmdeploy"])
    parser.add_argument("--template", help="chat template (default: the model's config)")
    args = parser.parse_args(argv)
    _import_gradio()  # fail fast, before loading the model
    from labkit.chat.engine import make_engine

    kwargs = {"template": args.template} if args.template else {}
    engine = make_engine(args.model_dir, args.backend, **kwargs)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"labkit.chat.demo: listening on {args.host}: other machines can reach this page.", file=sys.stderr)
    build_demo(engine).queue(max_size=16).launch(server_name=args.host, server_port=args.port, share=False)
    return 0
