"""Training VGG nets with the paper's recipe (Sec. 3.1), the demo dataset and the demo models; see docs/training.md.

fit          the CLI: python -m train.fit --data DIR --arch A --out ckpt.pt
recipe       every hyperparameter of a run, defaulting to the paper's
imagefolder  ImageFolder datasets and the train/validation split, with one-line errors
augment      rescale to S (fixed or jittered), random crop, optional flip, AlexNet PCA colour shift
batches      which images each data-parallel process trains on
loop         one SGD epoch, and the validation accuracy that drives the learning rate
dense        the paper's dense evaluation in PyTorch (validation and held-out accuracy)
init         Glorot, or a deeper net's first layers from a trained configuration A
distributed  DDP over gloo processes on CPU
checkpoints  resumable and shippable checkpoints, the per-epoch JSON-lines log
progress     a text progress bar
heldout      held-out accuracy of checkpoints: python -m train.heldout
demo_data    the demo dataset: python -m train.demo_data
demo_models  the committed demo models: make demo-models
"""
