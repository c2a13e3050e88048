"""Stage evaluate: validation accuracy, precision/recall/F1, confusion matrix, sample grid."""

import csv

import numpy as np

from imgrec import params, runtime, stage
from imgrec.checkpoint import load_checkpoint
from imgrec.dataset import load_prepared
from imgrec.evaluation import classification_metrics, confusion_rows
from imgrec.figures import confusion_matrix_figure, prediction_grid_figure, save_png
from imgrec.inference import predict_logits

SAMPLE_IMAGES = 10


def main() -> None:
    parser = stage.StageParser(description=__doc__)
    parser.add_argument("--prepared", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--device", type=stage.param, required=True)
    parser.add_argument("--num-threads", type=stage.param, required=True)
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--confusion", required=True, help="CSV rows for DVC's confusion template")
    parser.add_argument("--confusion-png", required=True)
    parser.add_argument("--samples-png", required=True)
    args = parser.parse_args()
    runtime.make_deterministic(params.positive_int("num_threads", args.num_threads))
    device = runtime.pick_device(str(args.device))

    data = load_prepared(args.prepared)
    model, info = load_checkpoint(args.model, device)
    names = info["class_names"]
    logits = predict_logits(model, data.images, data.val_index, device=device, desc="evaluate")
    y_true, y_pred = data.labels[data.val_index], logits.argmax(1).numpy()
    metrics = classification_metrics(y_true, y_pred, names)
    print(f"validation accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro']['f1']:.4f}")

    stage.write_json(args.metrics, metrics)
    with stage.atomic_file(args.confusion) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["actual", "predicted"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(confusion_rows(y_true, y_pred, names))
    save_png(confusion_matrix_figure(y_true, y_pred, names), args.confusion_png)
    # Evenly spaced through the validation set: a fixed, class-varied sample.
    picks = np.linspace(0, len(data.val_index) - 1, min(SAMPLE_IMAGES, len(data.val_index))).astype(
        int
    )
    save_png(
        prediction_grid_figure(
            [data.images[data.val_index[i]] for i in picks],
            [names[y_true[i]] for i in picks],
            [names[y_pred[i]] for i in picks],
        ),
        args.samples_png,
    )


if __name__ == "__main__":
    stage.run(main)
