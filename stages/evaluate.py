"""Stage evaluate: validation accuracy, precision/recall/F1, confusion matrix, sample grid."""

from imgrec import runtime, stage
from imgrec.checkpoint import load_checkpoint
from imgrec.config import EvaluateConfig
from imgrec.evaluation import classification_metrics, save_confusion_rows
from imgrec.figures import confusion_matrix_figure, save_figure, validation_samples_figure
from imgrec.files import write_json
from imgrec.inference import predict_logits
from imgrec.prepared import load_prepared


def main(args, config: EvaluateConfig) -> None:
    device = runtime.start(config)
    data = load_prepared(args.prepared)
    model, info = load_checkpoint(args.model, device)
    names = info["class_names"]
    logits = predict_logits(model, data.images, data.val_index, device=device, desc="evaluate")
    y_true, y_pred = data.labels[data.val_index], logits.argmax(1).numpy()
    metrics = classification_metrics(y_true, y_pred, names)
    print(f"validation accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro']['f1']:.4f}")

    write_json(args.metrics, metrics)
    save_confusion_rows(args.confusion, y_true, y_pred, names)
    save_figure(confusion_matrix_figure(y_true, y_pred, names), args.confusion_png)
    save_figure(validation_samples_figure(data, y_pred, names), args.samples_png)


if __name__ == "__main__":
    stage.run(main, ["prepared", "model", "metrics", "confusion", "confusion_png", "samples_png"])
