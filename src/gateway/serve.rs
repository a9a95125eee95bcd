//! Glue to the server: the chat route built from the server's [`AppState`] (its config,
//! tier policy and classifier worker), ready for `server::app_with`.

use std::sync::Arc;

use axum::Router;

use super::auto::PolicyChooser;
use super::handler::{self, ChatState};
use super::{from_config, GatewayError};
use crate::server::AppState;

/// The gateway and `auto` chooser the server's state describes.
pub fn chat_state(app: &AppState) -> Result<ChatState, GatewayError> {
    let gateway = from_config::build(&app.config, &app.policy)?;
    let chooser = PolicyChooser {
        worker: app.worker.clone(),
        policy: app.policy.clone(),
        deadline: app.config.server.deadline(),
    };
    Ok(ChatState {
        gateway: Arc::new(gateway),
        chooser: Some(Arc::new(chooser)),
        request_log: app.request_log.clone(),
    })
}

/// `POST /v1/chat/completions`, to pass to `server::app_with(state, ...)`.
pub fn api_routes(app: &AppState) -> Result<Router<AppState>, GatewayError> {
    Ok(handler::routes(chat_state(app)?))
}
