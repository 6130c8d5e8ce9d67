"""Knowledge distillation with MSELoss (port of sentence-transformers' model_distillation.py).

The student learns to reproduce the teacher's embeddings: the label of each sentence is the teacher's
embedding of it, and MSELoss compares the student's embedding with it.

    python examples/training_distillation.py --data-dir ../shared/data/stsb
"""

from __future__ import annotations

from datetime import datetime

from common import finish, model_path, parser, sentences, stsb
from datasets import Dataset

from stcore_jax import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from stcore_jax.evaluation import EmbeddingSimilarityEvaluator, MSEEvaluator, SequentialEvaluator
from stcore_jax.losses import MSELoss


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0], "nreimers/MiniLM-L6-H384-uncased", 64)
    p.add_argument("--teacher", default="all-MiniLM-L6-v2")
    args = p.parse_args(argv)
    output_dir = args.output_dir or f"output/model_distillation_{datetime.now():%Y-%m-%d_%H-%M-%S}"

    teacher = SentenceTransformer(model_path(args.teacher))
    student = SentenceTransformer(model_path(args.model))
    student.max_seq_length = args.max_seq_length
    if teacher.get_embedding_dimension() != student.get_embedding_dimension():
        raise ValueError(f"teacher ({teacher.get_embedding_dimension()}) and student "
                         f"({student.get_embedding_dimension()}) embedding sizes differ; MSELoss needs them equal "
                         "(add a Dense module to the student, or pick a matching teacher)")

    train_sentences = sentences(args.data_dir, "train", args.max_rows)
    eval_sentences = sentences(args.data_dir, "validation", args.max_rows)
    # Labels: the teacher's embeddings, computed once up front.
    train_dataset = Dataset.from_dict({"sentence": train_sentences,
                                       "label": teacher.encode(train_sentences, batch_size=64).tolist()})
    train_loss = MSELoss(model=student)

    stsb_dev = stsb(args.data_dir, "validation", args.max_rows)
    dev_evaluator = SequentialEvaluator([
        EmbeddingSimilarityEvaluator(stsb_dev["sentence1"], stsb_dev["sentence2"], stsb_dev["score"], name="sts-dev"),
        MSEEvaluator(source_sentences=eval_sentences, target_sentences=eval_sentences, teacher_model=teacher,
                     name="teacher-mse"),
    ])
    training_args = SentenceTransformerTrainingArguments(
        output_dir=output_dir, num_train_epochs=args.epochs, max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size, learning_rate=1e-4, warmup_ratio=0.1,
        eval_strategy="steps", eval_steps=100, save_strategy="steps", save_steps=100, save_total_limit=2,
        logging_steps=100, run_name="distillation")
    trainer = SentenceTransformerTrainer(model=student, args=training_args, train_dataset=train_dataset,
                                         loss=train_loss, evaluator=dev_evaluator)
    trainer.train()
    return finish(trainer, student, output_dir, dev_evaluator(student))


if __name__ == "__main__":
    main()
