"""The code of a pre-trained encoder's MLflow model ("models from code"): MLflow copies this file into the
model and runs it when the model is loaded, so a logged CP/MTB encoder needs torch, transformers, pandas
and MLflow, never recon.

    model = mlflow.pyfunc.load_model("models:/<model id>")
    vectors = model.predict(["[unused0] Bill Gates [unused1] founded [unused2] Microsoft [unused3] ."])

The model's artifact ``encoder`` is the plain Hugging Face directory ``recon export`` writes. ``predict``
takes a list of texts (or a DataFrame with a ``text`` column) and follows that directory's README: each
text carries recon's entity markers (C+M; with OnlyC / C+T the blank or type token takes the start
marker's place), and the relation representation is the concatenation of the last hidden states at the
head's and the tail's start token (2 x hidden floats per text).

Nothing here imports recon, and the module only defines the model until MLflow asks for it (``set_model``
at the end is what MLflow's loader reads).
"""
from __future__ import annotations

from typing import Any

import mlflow.pyfunc
from mlflow.models import set_model


class RelationEncoder(mlflow.pyfunc.PythonModel):
    """Texts with entity markers -> relation vectors (see the module docstring)."""

    def load_context(self, context: Any) -> None:
        import torch
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        directory = context.artifacts["encoder"]
        self.markers = AutoConfig.from_pretrained(directory).recon_relation
        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        self.model = AutoModel.from_pretrained(directory).eval()
        self.torch = torch

    def _position(self, ids: list[int], *tokens: str) -> int:
        for token in tokens:
            token_id = self.tokenizer.convert_tokens_to_ids(token)
            if token_id in ids:
                return ids.index(token_id)
        raise ValueError(f"the text has none of {', '.join(tokens)}: mark the entities as recon's input formats do "
                         f"(C+M: {self.markers['head_start']} head {self.markers['head_end']} ... "
                         f"{self.markers['tail_start']} tail {self.markers['tail_end']})")

    def predict(self, context, model_input: list[str], params=None) -> list[list[float]]:
        """One relation vector per text (MLflow checks the input against the type hints and hands a list)."""
        texts = list(model_input["text"]) if hasattr(model_input, "columns") else list(model_input)
        types = self.markers.get("types") or {}  # e.g. {"subj_PERSON": token, "obj_CITY": token}
        out = []
        for text in texts:
            enc = self.tokenizer(str(text), return_tensors="pt", truncation=True)
            ids = enc["input_ids"][0].tolist()
            head = self._position(ids, self.markers["head_start"], self.markers["head_blank"],
                                  *[v for k, v in types.items() if k.lower().startswith("subj")])
            tail = self._position(ids, self.markers["tail_start"], self.markers["tail_blank"],
                                  *[v for k, v in types.items() if k.lower().startswith("obj")])
            with self.torch.no_grad():
                hidden = self.model(**enc).last_hidden_state[0]
            out.append(self.torch.cat([hidden[head], hidden[tail]]).float().tolist())
        return out


set_model(RelationEncoder())
