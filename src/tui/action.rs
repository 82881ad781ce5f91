//! What a person can ask the UI to do. Keys map to these through [`super::keymap::KEYMAP`];
//! mouse clicks produce [`Action::Select`].

/// One user intent, applied by [`super::app::App::update`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Select the layer above.
    SelectPrev,
    /// Select the layer below.
    SelectNext,
    /// Select the row at this index (0 = the network input).
    Select(usize),
    /// Switch the side that the editing keys act on: weights ↔ activations.
    ToggleFocus,
    /// Next clipping strategy on the focused side.
    NextStrategy,
    /// Previous clipping strategy on the focused side.
    PrevStrategy,
    /// One bit more on the focused side.
    BitsUp,
    /// One bit less on the focused side.
    BitsDown,
    /// Next weight granularity.
    CycleGranularity,
    /// Symmetric ↔ asymmetric on the focused side.
    ToggleScheme,
    /// Raise the percentile (one step on the ladder 90 … 100).
    PercentileUp,
    /// Lower the percentile.
    PercentileDown,
    /// Narrow the focused clipping range by 5% (strategy becomes `manual`).
    Narrow,
    /// Widen the focused clipping range by 5%.
    Widen,
    /// Back to the strategy's range.
    ResetRange,
    /// Keep the selected layer in float (or quantize it again).
    ToggleFloat,
    /// Apply the selected layer's settings to all layers.
    ApplyToAll,
    /// Undo the last change.
    Undo,
    /// Run again.
    Rerun,
    /// Export the current parameters.
    Export,
    /// Linear ↔ logarithmic counts in the histograms.
    ToggleLog,
    /// Empirical bias correction on ↔ off.
    ToggleBiasCorrection,
    /// Cross-layer equalization on ↔ off.
    ToggleCle,
    /// Next weight rounding (nearest → gptq → …).
    CycleRounding,
    /// SmoothQuant (α 0.5) on ↔ off.
    ToggleSmoothQuant,
    /// Loss-aware activation range refinement on ↔ off.
    ToggleActRefine,
    /// Open the mixed-precision panel (and start its search).
    MixedOpen,
    /// Apply the mixed-precision point selected in the panel.
    MixedApply,
    /// Search the mixed-precision front again by the next unit (auto, layer, channel).
    MixedUnit,
    /// Previous output channel of the weights.
    PrevChannel,
    /// Next output channel of the weights.
    NextChannel,
    /// Per-channel weights: one channel's histogram → range plot of all channels → whole tensor.
    CycleWeightView,
    /// Show or hide the help overlay.
    ToggleHelp,
    /// Close the help overlay (or nothing).
    Close,
    /// Open the `/` prompt: jump to a row by name.
    SearchOpen,
    /// A character typed into the `/` prompt.
    SearchType(char),
    /// Delete the prompt's last character.
    SearchBackspace,
    /// Keep the row found and close the prompt.
    SearchAccept,
    /// Close the prompt and go back to the row selected before it opened.
    SearchCancel,
    /// The next row matching the search (the prompt's text, or the last accepted one).
    SearchNext,
    /// The previous row matching the search.
    SearchPrev,
    /// Leave.
    Quit,
}
