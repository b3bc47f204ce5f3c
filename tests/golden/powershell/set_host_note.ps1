# A step script rendered by imaging.powershell; every value in it came through ps_literal.
Set-StrictMode -Version 3
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

function Write-ImagingResult {
    # The only way a step reports: one compressed JSON line between two marker lines.
    param([Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result)
    $json = ConvertTo-Json -InputObject $Result -Depth 8 -Compress
    Write-Output '<<<IMAGING-RESULT>>>'
    Write-Output $json
    Write-Output '<<<END-IMAGING-RESULT>>>'
}

function Write-ImagingFailure {
    # A failed step still reports in the same frame, saying whether it had already changed something.
    param(
        [Parameter(Mandatory = $true)] [System.Management.Automation.ErrorRecord] $ErrorRecord,
        [Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result
    )
    $where = ''
    if ($null -ne $ErrorRecord.InvocationInfo) { $where = [string]$ErrorRecord.InvocationInfo.PositionMessage }
    $Result['ok'] = $false
    $Result['error'] = [string]$ErrorRecord.Exception.Message
    $Result['where'] = $where
    # What kind of failure it was, for the provider's retry of a file another process holds (ObjectInUse)
    $Result['error_id'] = [string]$ErrorRecord.FullyQualifiedErrorId
    $Result['category'] = [string]$ErrorRecord.CategoryInfo.Category
    $Result['hresult'] = [int]$ErrorRecord.Exception.HResult
    Write-ImagingResult -Result $Result
}

function Initialize-ImagingFolder {
    # Creates a folder (and its parents) if it is missing; never touches an existing one.
    param([Parameter(Mandatory = $true)] [string] $Path)
    if (-not (Test-Path -LiteralPath $Path -PathType Container)) {
        New-Item -ItemType Directory -Path $Path -Force | Out-Null
    }
}

function Get-ImagingSha256 {
    param([Parameter(Mandatory = $true)] [string] $Path)
    (Get-FileHash -LiteralPath $Path -Algorithm SHA256).Hash.ToLowerInvariant()
}

$ImagingAction = 'set_host_note'
$Result = [ordered]@{ ok = $true; changed = $false; action = $ImagingAction }
try {
    # A note on the host beside an instrument's disks (prepared.json: the generation `invoke prepare` made,
    # until a switch takes it), written whole (beside, then moved over) or, when the note is null, removed.
    # Already so: nothing to do.
    $Path = 'E:\Imaging\instruments\NDXZOOM\prepared.json'
    $Note = [ordered]@{'release' = '2026C3.1'; 'generation' = '2026C3.1-0a1b2c3d'; 'operation' = '0a1b2c3d4e5f'; 'who' = 'operator'; 'when' = '20261130T010000000Z'}
    $exists = Test-Path -LiteralPath $Path -PathType Leaf
    if ($null -eq $Note) {
        if ($exists) {
            Remove-Item -LiteralPath $Path -Force
            $Result['changed'] = $true
        }
    }
    else {
        $text = ConvertTo-Json -InputObject $Note -Depth 6 -Compress
        $old = if ($exists) { [System.IO.File]::ReadAllText($Path) } else { $null }
        if ($old -cne $text) {
            $folder = Split-Path -Path $Path -Parent
            if (-not (Test-Path -LiteralPath $folder -PathType Container)) { New-Item -ItemType Directory -Path $folder -Force | Out-Null }
            [System.IO.File]::WriteAllText($Path + '.partial', $text, (New-Object System.Text.UTF8Encoding -ArgumentList $false))
            Move-Item -LiteralPath ($Path + '.partial') -Destination $Path -Force
            $Result['changed'] = $true
        }
    }
    Write-ImagingResult -Result $Result
}
catch {
    Write-ImagingFailure -ErrorRecord $_ -Result $Result
}
