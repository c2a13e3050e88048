"""Stage evaluate: validation accuracy and F1, per-class scores, confusion matrix, samples."""

from imgrec.data.prepared import load_prepared
from imgrec.files import write_json
from imgrec.pipeline import runtime, stage
from imgrec.recommender.plotting import (
    confusion_matrix_figure,
    save_figure,
    validation_samples_figure,
)
from imgrec.training.checkpoint import check_matches, load_checkpoint
from imgrec.training.evaluate import (
    EvaluateConfig,
    classification_metrics,
    confusion_rows,
    not_learned,
    save_rows,
)
from imgrec.training.inference import predict_logits


def main(args, config: EvaluateConfig) -> None:
    device = runtime.start(config)
    data = load_prepared(args.prepared)
    checkpoint = load_checkpoint(args.model, device)
    check_matches(checkpoint, data.img_size, args.prepared)
    names = checkpoint.class_names
    logits = predict_logits(
        checkpoint.model, data.images, data.val_index, device=device, desc="evaluate"
    )
    y_true, probabilities = data.labels[data.val_index], logits.softmax(1).numpy()
    y_pred = probabilities.argmax(1)
    metrics, per_class = classification_metrics(y_true, y_pred, names)
    print(f"validation accuracy {metrics['val_accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f}")
    train_images = len(data.train_index)
    if warning := not_learned(metrics["val_accuracy"], y_true, len(names), train_images,
                              checkpoint.train_config):  # fmt: skip
        print(f"warning: {warning}")

    write_json(args.metrics, metrics)
    save_rows(args.per_class, per_class)
    save_rows(args.confusion, confusion_rows(y_true, y_pred, names))
    save_figure(confusion_matrix_figure(y_true, y_pred, names), args.confusion_png)
    save_figure(validation_samples_figure(data, probabilities, names), args.samples_png)


if __name__ == "__main__":
    paths = ["prepared", "model", "metrics", "per_class", "confusion", "confusion_png"]
    stage.run(main, EvaluateConfig, [*paths, "samples_png"])
