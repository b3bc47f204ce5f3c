param([string] $GuestUser, [string] $GuestPassword, [string] $JoinUser, [string] $JoinPassword)
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

$ImagingAction = 'remove_volume_links'
$Result = [ordered]@{ ok = $true; changed = $false; action = $ImagingAction }
try {
    if ([string]::IsNullOrEmpty($GuestUser) -or $null -eq $GuestPassword) {
        throw 'no guest credential was passed: set IMAGING_GUEST_USER and IMAGING_GUEST_PASSWORD'
    }
    $GuestSecret = ConvertTo-SecureString -String $GuestPassword -AsPlainText -Force
    $GuestCredential = New-Object System.Management.Automation.PSCredential -ArgumentList $GuestUser, $GuestSecret
    # Inside the guest, over PowerShell Direct: the undo of configure_guest in a guest that is not imaging's
    # (an adopted instrument's legacy side). Each link that is a junction to its volume's mount folder is
    # removed, the volume's access path at that folder is removed, and the folder too when it is empty.
    # Anything else is left alone.
    $Vm = 'NDXGEM-legacy'
    $Volumes = @([ordered]@{'label' = 'Data'; 'mount' = 'C:\volumes\Data'; 'link' = 'C:\data'}, [ordered]@{'label' = 'Shared'; 'mount' = 'C:\volumes\Shared'; 'link' = 'C:\LabVIEW Modules\run'; 'sub' = 'LabVIEW Modules\run'})
    $request = ConvertTo-Json -InputObject ([ordered]@{ volumes = @($Volumes) }) -Depth 4 -Compress
    $answer = Invoke-Command -VMName $Vm -Credential $GuestCredential -ErrorAction Stop -ArgumentList $request -ScriptBlock {
        param([string] $RequestJson)
        Set-StrictMode -Version 3
        $ErrorActionPreference = 'Stop'
        $request = ConvertFrom-Json -InputObject $RequestJson
        $changed = $false
        foreach ($spec in @($request.volumes)) {
            $mount = ([string]$spec.mount).TrimEnd('\')
            $link = ([string]$spec.link).TrimEnd('\')
            $to = $mount
            if ($spec.PSObject.Properties.Name -contains 'sub' -and [string]$spec.sub) { $to = Join-Path -Path $mount -ChildPath ([string]$spec.sub) }
            $item = Get-Item -LiteralPath $link -Force -ErrorAction SilentlyContinue
            if ($null -ne $item -and ($item.Attributes -band [System.IO.FileAttributes]::ReparsePoint) -ne 0) {
                if (([string]@($item.Target)[0]).TrimEnd('\') -eq $to) {
                    [System.IO.Directory]::Delete($link, $false)
                    $changed = $true
                }
            }
            $found = @(Get-Volume | Where-Object { $_.FileSystemLabel -eq [string]$spec.label })
            if ($found.Count -eq 1) {
                $partition = Get-Partition -Volume $found[0]
                $paths = @($partition.AccessPaths | ForEach-Object { ([string]$_).TrimEnd('\') })
                if ($paths -contains $mount) {
                    Remove-PartitionAccessPath -DiskNumber $partition.DiskNumber -PartitionNumber $partition.PartitionNumber -AccessPath ($mount + '\')
                    $changed = $true
                }
            }
            if ((Test-Path -LiteralPath $mount -PathType Container) -and @(Get-ChildItem -LiteralPath $mount -Force).Count -eq 0) {
                [System.IO.Directory]::Delete($mount, $false)
                $changed = $true
            }
        }
        [string]$changed
    }
    $Result['changed'] = ([string]$answer -eq 'True')
    Write-ImagingResult -Result $Result
}
catch {
    Write-ImagingFailure -ErrorRecord $_ -Result $Result
}
